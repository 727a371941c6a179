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
        import sys
        from tests.fake_grid import one_round_of_each_exchange

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "opacus":
                    raise ImportError(f"{name} is not installed on this node")
        sys.meta_path.insert(0, Refuse())
        one_round_of_each_exchange()
        print("ok", "opacus" in sys.modules)
    """)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok False"
