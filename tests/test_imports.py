"""Stage boundaries: ``import wilss`` and its stages never import ray (DESIGN.md)."""

import subprocess
import sys


def test_importing_wilss_does_not_import_ray():
    code = ("import sys, wilss, wilss.cli, wilss.config, wilss.protocol, wilss.engine, wilss.data.datasets, "
            "wilss.models, wilss.methods, wilss.metrics, wilss.results; "
            "print('ray' in sys.modules, any(m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
