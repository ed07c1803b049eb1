"""`farm webhooks add|list|remove|deliveries`: where a tenant's events are POSTed (issue 25)."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json


@cli.group("webhooks")
def webhooks_group():
    """Webhook endpoints: signed POSTs of a tenant's events (Standard Webhooks), at least once."""


@webhooks_group.command("add")
@click.argument("url")
@click.option("--tenant", default="local", show_default=True, help="Whose events (remotely: the key's tenant).")
@click.option("--events", default="*", show_default=True,
              help="Event types, comma-separated: batch.accepted, batch.finished, job.succeeded, job.failed, ...")
@click.option("--batch", default=None, help="Only this batch's events.")
@click.option("--json", "as_json", is_flag=True, help='Print {"id": ..., "secret": "whsec_...", ...} as JSON.')
@click.pass_obj
def webhooks_add(state: State, url, tenant, events, batch, as_json):
    """POST events to URL. Its signing secret is printed once: verify deliveries with it."""
    made = state.farm.add_webhook(url, tenant=tenant, events=events, batch=batch)
    if as_json:
        emit_json(made)
    else:
        click.echo(made["secret"])
        click.echo(f"webhook {made['id']} for tenant {made['tenant']}: {','.join(made['events'])} -> {made['url']}"
                   " (secret shown once: store it now)", err=True)


@webhooks_group.command("list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhooks_list(state: State, tenant, as_json):
    """Endpoints: id, tenant, events, URL, and how delivery stands."""
    rows = state.farm.webhooks(tenant)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        failing = f"  failing x{r['failures']}, next try {r['next_attempt_at']}" if r["failures"] else ""
        click.echo(f"{r['id']:>4}  {r['tenant']:<16} {','.join(r['events']):<30} {r['url']}"
                   f"{'  batch ' + r['batch'] if r['batch'] else ''}  delivered through {r['delivered_through']}{failing}")


@webhooks_group.command("remove")
@click.argument("webhook_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhooks_remove(state: State, webhook_id, as_json):
    """Stop delivering to an endpoint."""
    done = state.farm.remove_webhook(webhook_id)
    emit_json(done) if as_json else click.echo(f"webhook {webhook_id} removed")


@webhooks_group.command("deliveries")
@click.argument("webhook_id", type=int, required=False)
@click.option("--failed", is_flag=True, help="Only attempts that failed.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def webhooks_deliveries(state: State, webhook_id, failed, limit, as_json):
    """Delivery attempts, newest first: the event, its webhook-id, the receiver's answer or the error."""
    rows = state.farm.webhook_deliveries(webhook_id, failed=failed, limit=limit)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        outcome = f"HTTP {r['status_code']}" if r["ok"] else f"FAILED {r['error'] or ''}"
        click.echo(f"{r['at']}  webhook {r['webhook']}  {r['webhook_id']:<12} attempt {r['attempt']}  {outcome}"
                   f"  {r['duration_ms']} ms")
