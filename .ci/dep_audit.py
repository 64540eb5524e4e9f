"""Dependency audit of the installed environment (pip-audit), part of ``make test``.

Fails (exit 1) when an installed package has a known vulnerability that is not listed, with its reason, in
``.ci/audit-ignore.txt``. Where no vulnerability service can be reached, or it answers for none of the packages
(pip-audit then says "No known vulnerabilities found" although it checked nothing), it says so plainly and does
not fail the run: an offline machine cannot audit, and must not pretend it did.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

IGNORE_FILE = Path(__file__).with_name("audit-ignore.txt")
SERVICES = ("pypi", "osv")
TIMEOUT_S = 300


def ignored() -> list[str]:
    """Vulnerability ids accepted on purpose: ``ID  reason`` per line, ``#`` comments."""
    if not IGNORE_FILE.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in IGNORE_FILE.read_text().splitlines())
    return [line.split()[0] for line in lines if line]


def run(service: str) -> tuple[dict | None, str]:
    """pip-audit's JSON report with ``service`` (None when it could not produce one) and its error text."""
    cmd = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off", "-f", "json",
           "--timeout", "15", "-s", service, *(f"--ignore-vuln={v}" for v in ignored())]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {TIMEOUT_S} s"
    try:
        return json.loads(proc.stdout), proc.stderr.strip()
    except json.JSONDecodeError:
        return None, (proc.stderr.strip().splitlines() or ["no output"])[-1]


def main() -> int:
    notes = []
    for service in SERVICES:
        report, error = run(service)
        if report is None:
            notes.append(f"{service}: unreachable ({error})")
            continue
        deps = report.get("dependencies", [])
        audited = [d for d in deps if "skip_reason" not in d]
        if not audited:
            reason = deps[0]["skip_reason"] if deps else "no packages"
            notes.append(f"{service}: answered for none of {len(deps)} packages (e.g. {reason})")
            continue
        vulnerable = [d for d in audited if d.get("vulns")]
        skipped = len(deps) - len(audited)
        for dep in vulnerable:
            for vuln in dep["vulns"]:
                fixes = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
                print(f"dependency audit: {dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixes})")
        print(f"dependency audit ({service}): {len(audited)} packages checked, {len(vulnerable)} with known "
              f"vulnerabilities; {skipped} not on the index and not checked (local builds such as torch)")
        return 1 if vulnerable else 0
    print("dependency audit: NOT DONE, no vulnerability service could be reached from this machine: "
          + "; ".join(notes) + ". Run `make audit` where the internet is reachable.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
