"""Settings profiles: named sets of asset settings (``<name>.toml``, one table per asset), printed as Dagster run
config for ``dagster asset materialize -c FILE``:

    python -m dagster_project.profiles demo [--select group:curation] > run_config.yaml

``demo`` holds the CPU demo's sizes where they differ from the recipe values (the settings' defaults). A table of
a stage registered in ``pipelines.settings.STAGES`` is validated against its settings first, so a mistake in a
profile is reported with the field's name before any run starts; its ``asset`` sub-table (``[sft_model.asset]``)
holds options only the asset has (its checks), which Dagster validates. Light: dagster is imported inside ``main``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines.settings import (
    ASSET_OPTIONS,
    PROFILES_DIR,
    STAGES,
    ArgumentParser,
    load_values,
    profile_path,
    stage_settings,
)


def profile_tables(name: str) -> dict[str, dict]:
    """asset name -> setting values of profile ``name``, registered stages validated against their settings."""
    path = profile_path(name)
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise ValueError(f"no settings profile {name!r}: {path} does not exist (known: {', '.join(known)})")
    tables = load_values(path)
    for asset, values in tables.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: [{asset}] must be a table of setting values")
        own = values.get(ASSET_OPTIONS, {})
        if not isinstance(own, dict):
            raise ValueError(f"{path}: [{asset}.{ASSET_OPTIONS}] must be a table of asset options")
        if asset in STAGES:
            try:
                stage_settings(asset)(**{k: v for k, v in values.items() if k != ASSET_OPTIONS})
            except ValueError as e:
                raise ValueError(f"{path} [{asset}]: {e}") from None
    return tables


def selected_assets(select: str | None) -> list[str] | None:
    """Asset names of a selection: ``group:<name>`` or comma-separated asset names; None for every asset."""
    if not select:
        return None
    from dagster_project.definitions import defs

    specs = list(defs.resolve_all_asset_specs())
    names: list[str] = []
    for part in (p.strip() for p in select.split(",") if p.strip()):
        if part.startswith("group:"):
            group = part.removeprefix("group:")
            found = [s.key.to_user_string() for s in specs if s.group_name == group]
        else:
            found = [s.key.to_user_string() for s in specs if s.key.to_user_string() == part]
        if not found:
            raise ValueError(f"--select {part!r} matches no asset")
        names.extend(found)
    return names


def run_config(name: str, select: str | None = None) -> dict:
    """Dagster run config (``ops: {asset: {config: {...}}}``) of profile ``name`` for the selected assets."""
    tables = profile_tables(name)
    wanted = selected_assets(select)
    assets = [a for a in tables if wanted is None or a in wanted]
    ops = {}
    for asset in assets:
        values = dict(tables[asset])
        own = values.pop(ASSET_OPTIONS, {})
        ops[asset] = {"config": {**values, **own}}
    return {"ops": ops}


def main(argv: Sequence[str] | None = None) -> None:
    import yaml

    parser = ArgumentParser(description="Print a settings profile as Dagster run config YAML.")
    parser.add_argument(
        "profile", help=f"a name in {PROFILES_DIR.parent.name}/{PROFILES_DIR.name} (e.g. demo) or a path"
    )
    parser.add_argument("--select", default=None, help="group:<name> or comma-separated asset names (default: all)")
    args = parser.parse_args(argv)
    try:
        config = run_config(args.profile, args.select)
    except ValueError as e:
        parser.error(str(e))
    sys.stdout.write(yaml.safe_dump(config, sort_keys=False))
