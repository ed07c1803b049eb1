"""`farm keys create|list|revoke` and `farm tenants set|show`: who may use the HTTP API (issue 23)."""

from __future__ import annotations

import click

from farm.cli import State, cli, emit_json


@cli.group("keys")
def keys_group():
    """API keys for the HTTP API: one tenant and scopes each, shown once."""


@keys_group.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for (made if new).")
@click.option("--scopes", default="submit,read", show_default=True, help="submit, read and/or admin.")
@click.option("--expires", default=None, help="30d, 12h, 15m (default: never).")
@click.option("--label", default="", help="A note: who or what uses it.")
@click.option("--json", "as_json", is_flag=True, help='Print {"key": ..., "prefix": ..., ...} as JSON.')
@click.pass_obj
def keys_create(state: State, tenant, scopes, expires, label, as_json):
    """Make a key. It is printed once; the ledger keeps only its HMAC."""
    made = state.farm.create_key(tenant, scopes, expires=expires, label=label)
    if as_json:
        emit_json(made)
    else:
        click.echo(made["key"])
        click.echo(f"tenant {made['tenant']}, scopes {','.join(made['scopes'])}, expires {made['expires_at'] or 'never'}"
                   " (shown once: store it now)", err=True)


@keys_group.command("list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def keys_list(state: State, tenant, as_json):
    """Keys by prefix, tenant, scopes, expiry and last use (never the keys)."""
    rows = state.farm.keys(tenant)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['prefix']}  {r['tenant']:<16} {','.join(r['scopes']):<18} expires {r['expires_at'] or 'never'}"
                   f"  last used {r['last_used_at'] or '-'}{'  REVOKED' if r['revoked'] else ''}  {r['label']}")


@keys_group.command("revoke")
@click.argument("prefix")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def keys_revoke(state: State, prefix, as_json):
    """Revoke the key farm_PREFIX_...: it stops working at once."""
    done = state.farm.revoke_key(prefix)
    emit_json(done) if as_json else click.echo(f"key {prefix} revoked")


@cli.group("tenants")
def tenants_group():
    """Tenants of a shared farm: what each may name."""


@tenants_group.command("set")
@click.argument("tenant")
@click.option("--s3-prefix", "s3_prefixes", multiple=True,
              help="An s3://bucket/prefix/ the tenant may name in submissions (repeatable; replaces the list).")
@click.option("--weight", type=float, default=None, help="Its share of the fleet under fair share (default 1).")
@click.option("--images-per-day", type=int, default=None, help="Quota: jobs to render per 24 hours (-1: none).")
@click.option("--gpu-seconds-per-day", type=float, default=None, help="Quota: GPU-seconds per 24 hours (-1: none).")
@click.option("--max-queued", type=int, default=None, help="Quota: jobs queued or running at once (-1: none).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tenants_set(state: State, tenant, s3_prefixes, weight, images_per_day, gpu_seconds_per_day, max_queued, as_json):
    """Make or change a tenant: what it may name, its weight, its quotas."""
    given = {"images_per_day": images_per_day, "gpu_seconds_per_day": gpu_seconds_per_day, "max_queued": max_queued}
    quotas = {k: (None if v is not None and v < 0 else v) for k, v in given.items() if v is not None}
    info = state.farm.set_tenant(tenant, s3_prefixes=list(s3_prefixes) if s3_prefixes else None, weight=weight,
                                 quotas=quotas or None)
    if as_json:
        emit_json(info)
        return
    click.echo(f"tenant {info['tenant']}: weight {info['weight']:g}, quotas {_quotas(info['quotas'])}, "
               f"s3 prefixes {info['s3_prefixes'] or 'none'}")


def _quotas(quotas: dict | None) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in sorted((quotas or {}).items())) or "none"


@tenants_group.command("show")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tenants_show(state: State, tenant, as_json):
    """A tenant's settings, keys, and what counts against its quotas (the last 24 hours)."""
    info = state.farm.tenant(tenant)
    if as_json:
        emit_json(info)
        return
    used, left = info["usage"], info["left"]
    click.echo(f"tenant {info['tenant']}: weight {info['weight']:g}, s3 prefixes {info['s3_prefixes'] or 'none'}, "
               f"{len(info['keys'])} key(s)")
    click.echo(f"  quotas: {_quotas(info['quotas'])}")
    click.echo(f"  today: {used['images_today']} images, {used['gpu_seconds_today']:g} GPU-seconds; "
               f"{used['queued']} queued or running")
    if left:
        click.echo(f"  left: {_quotas(left)}")
