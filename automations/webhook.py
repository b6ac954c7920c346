"""Save the webhook block that batch alerts notify through, and write the automation file pointed at it.

    .venv/bin/python automations/webhook.py URL [--block NAME] [--out FILE]

An automation names its notification block by id, which Prefect assigns when the block is saved,
so the file to apply is written here with that id filled in. Saving again under the same name
changes the URL and keeps the id: an automation already created keeps working.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "batch-success-rate-low.yaml"
PLACEHOLDER = "block_document_id: BLOCK_DOCUMENT_ID"
# Slack's and most chat webhooks' shape; {{subject}} and {{body}} are the automation's, rendered.
JSON_DATA = {"text": "{{subject}}\n{{body}}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the webhook URL notifications are POSTed to")
    parser.add_argument("--block", default="indexflow-alerts", help="block name (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path(".indexflow/batch-success-rate-low.yaml"),
                        help="the automation file to write (default: %(default)s)")
    args = parser.parse_args(argv)

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:  # else the block would go to a temporary server, then vanish
        print("webhook.py: no Prefect API configured: set PREFECT_API_URL (or `prefect config set`)", file=sys.stderr)
        return 2
    block = CustomWebhookNotificationBlock(name=args.block, url=args.url, json_data=JSON_DATA)
    block_id = block.save(args.block, overwrite=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(TEMPLATE.read_text().replace(PLACEHOLDER, f"block_document_id: {block_id}"))
    print(f"saved block custom-webhook/{args.block} ({block_id}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
