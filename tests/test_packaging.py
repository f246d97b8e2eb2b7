"""A regular (non-editable) install ships the rulebook and the model catalogue with the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_non_editable_install_finds_rules_and_catalogue(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    probe_code = (
        "import json, overseer_plan, overseer_rules\n"
        "from overseer_plan.rules import default_rules_dir, load_rulebook\n"
        "from overseer_plan.models import list_catalogue\n"
        "book = load_rulebook()\n"
        "print(json.dumps({'pkg': overseer_plan.__file__, 'rules': str(default_rules_dir()),\n"
        "                  'n_rules': len(book.rules), 'catalogue': [e.name for e in list_catalogue()]}))\n"
    )
    # Run from an empty directory with only the install on the path: nothing from the checkout can leak in.
    out = subprocess.run([sys.executable, "-c", probe_code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["pkg"].startswith(str(target)) and info["rules"].startswith(str(target))
    assert info["n_rules"] >= 50
    assert "overseer-tiny" in info["catalogue"] and "gpt2" in info["catalogue"]
