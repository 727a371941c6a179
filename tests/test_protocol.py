"""One protocol per exchange (common/protocol.py): both halves and reply validation read it."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.exchanges import CLIENT_EXCHANGES, client_exchange
from common.attacks import ATTACKS, NON_ADAPTIVE
from common.protocol import EXCHANGES, MESSAGES
from server.exchanges import EXCHANGE_CLASSES
from tests.fake_grid import set_identity


def test_client_server_and_protocol_know_the_same_exchanges():
    assert set(CLIENT_EXCHANGES) == set(EXCHANGE_CLASSES) == set(EXCHANGES)


@pytest.mark.parametrize("exchange", sorted(EXCHANGES))
def test_each_client_half_answers_exactly_its_messages(exchange):
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 4}, state=RecordDict(),
                      run_config={"exchange": exchange, "defense": "none"})
    client = client_exchange(context)
    assert set(client.handlers()) == {m.type for m in EXCHANGES[exchange].messages}
    foreign = next(t for t in MESSAGES if t not in client.handlers())
    set_identity()
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1, message_type=foreign)
    with pytest.raises(ValueError, match=f"message type '{foreign}' is not part of exchange '{exchange}'"):
        client.handle(msg)


def test_the_client_app_registers_every_message_of_the_protocol():
    from client.client_app import app

    registered = set(app._registered_funcs)  # Flower's own table of handlers
    assert {m.type if m.action else f"{m.category}.default" for m in MESSAGES.values()} <= registered


def test_attacks_are_named_once_and_the_non_adaptive_ones_are_few():
    assert len(ATTACKS) == len({a.name for a in ATTACKS.values()})
    assert NON_ADAPTIVE == {"observed", "mosaic", "gradient-inversion", "gi+mosaic"}
    assert {a.reads for a in ATTACKS.values()} == set(EXCHANGES)
