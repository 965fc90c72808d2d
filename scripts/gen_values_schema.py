"""Write helm/fleetserve/values.schema.json from fleetserve's pydantic models.

    PYTHONPATH=platform python scripts/gen_values_schema.py           # rewrite the file
    PYTHONPATH=platform python scripts/gen_values_schema.py --check   # exit 1 when it is stale

tests/helm/test_values_schema.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "helm" / "fleetserve" / "values.schema.json"


def render() -> str:
    from fleetserve.kube.chart_values import values_json_schema

    return json.dumps(values_json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Compare instead of writing; exit 1 when stale.")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not SCHEMA_PATH.exists() or SCHEMA_PATH.read_text() != text:
            print(f"{SCHEMA_PATH} is stale: run scripts/gen_values_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
