"""What a node's ClientApp process imports: Flower starts one per message in deployment, so
every import is paid per message. The ClientApp needs neither torchvision (its models and
ops cost seconds to import) nor Opacus outside DP-SGD."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.test_deployment import ROOT


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_the_client_app_imports_neither_torchvision_nor_opacus():
    result = run_python("""
        import sys
        import client.client_app
        print(sorted(m for m in ("torchvision", "opacus") if m in sys.modules))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def test_a_node_without_opacus_answers_non_dp_messages():
    """Opacus made unimportable: a VisualMixer round of each exchange still runs."""
    result = run_python("""
        import sys, tempfile, json
        from common.run_config import parse_run_config
        from server.server_app import main as server_main
        from tests.fake_grid import FakeGrid
        from flwr.app import Context, RecordDict

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opacus":
                    raise ImportError(f"{name} is not installed on this node")
        sys.meta_path.insert(0, Refuse())
        for exchange in ("weights", "images", "activations"):
            out = tempfile.mkdtemp()
            config = {"output-dir": out, "run-name": "r", "num-server-rounds": 1, "local-steps": 2,
                      "upload-samples": 16, "server-steps": 2, "eval-samples": 16, "exchange": exchange}
            server_main(FakeGrid(config, num_nodes=2),
                        Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config))
            row = json.loads(open(f"{out}/r/metrics.jsonl").read().splitlines()[-1])
            assert row["replies"] == 2 and row["vfe-sent"] >= 0.8, row
        print("ok", "opacus" in sys.modules)
    """)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok False"
