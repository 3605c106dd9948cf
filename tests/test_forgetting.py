"""The synthetic default preset, end to end, shows catastrophic forgetting (the README's table).

Runs ``wilss run`` with the real default preset for ``finetune`` and ``joint`` (a few minutes each on 2
CPU cores): joint must stay far above finetune on the old classes after the last step.
"""

from __future__ import annotations

import pytest

from wilss.cli import main
from wilss.results import read_rows


@pytest.mark.slow
def test_joint_far_above_finetune_on_old_classes(tmp_path):
    final = {}
    for method in ("finetune", "joint"):
        assert main(["run", "--method", method, "--out", str(tmp_path / method), "--quiet"]) == 0
        final[method] = read_rows(tmp_path / method / "results").iloc[-1]
    ft, joint = final["finetune"], final["joint"]
    # measured on the format-3 world: joint 70.0, finetune 0.0 (README, means of 3 seeds)
    assert joint["miou_old_nobg"] > ft["miou_old_nobg"] + 0.5, (joint["miou_old_nobg"], ft["miou_old_nobg"])
    assert joint["miou_all"] > ft["miou_all"]
