"""Command line: argv → config → logging → asyncio.run(...); picks the exit code (0 ok, 1 runtime, 2 usage/config)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson

from . import __version__
from .config import Config, ConfigError, load_config, render_config, secret_values, unbuilt_settings
from .durations import hour_key, parse_hour
from .logs import configure_logging, get_logger
from .tuning import tune_runtime

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def default_config_path() -> str:
    return os.environ.get("AMPLITUDE_BREVO_CONFIG") or "config.yaml"


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", default=None,
        help="config file (default: $AMPLITUDE_BREVO_CONFIG, then ./config.yaml)",
    )


def _add_selection(parser: argparse.ArgumentParser, *, all_help: str, by_sink: bool = False) -> None:
    """Which dead letters a `dlq replay`/`purge` acts on: ids, a source, (replay) a sink, or all."""
    _add_config(parser)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--id", type=int, action="append", dest="ids", help="a dead letter id (repeatable)")
    group.add_argument("--source", help="every dead letter of this source")
    if by_sink:
        group.add_argument("--sink", help="every dead letter of this sink (brevo_events, brevo_orders, brevo_contacts)")
    group.add_argument("--all", action="store_true", help=all_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amplitude-brevo", description="Amplitude product analytics into Brevo marketing automation."
    )
    parser.add_argument("--version", action="version", version=f"amplitude-brevo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    _add_config(run)
    run.add_argument("--dry-run", action="store_true", help="send nothing to Brevo; log what would be sent")

    backfill = sub.add_parser("backfill", help="send one range of export hours through the pipeline, then exit")
    _add_config(backfill)
    backfill.add_argument("--start", required=True, type=_hour, help="first hour, YYYYMMDDTHH or YYYY-MM-DDTHH (UTC)")
    backfill.add_argument("--end", required=True, type=_hour, help="last hour, inclusive")
    backfill.add_argument("--dry-run", action="store_true", help="send nothing to Brevo; log what would be sent")

    check = sub.add_parser("check-config", help="validate the config and print it resolved, secrets masked")
    _add_config(check)
    check.add_argument(
        "--online", action="store_true",
        help="also check both API keys and that every mapped Brevo attribute exists (sends only reads)",
    )

    status = sub.add_parser("status", help="checkpoints, Brevo budgets used, contacts and orders backlogs, dead letters (from the state file)")
    _add_config(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    dlq = sub.add_parser("dlq", help="inspect, replay and purge dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    dlq_list = dlq_sub.add_parser("list", help="list dead letters")
    _add_config(dlq_list)
    dlq_list.add_argument("--source", help="only this source (e.g. export)")
    dlq_list.add_argument("--all", action="store_true", help="include replayed ones")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_show = dlq_sub.add_parser("show", help="print one dead letter with its item")
    _add_config(dlq_show)
    dlq_show.add_argument("id", type=int)
    _add_selection(dlq_sub.add_parser("replay", help="re-send dead-lettered Brevo payloads"),
                   all_help="every dead letter not yet replayed", by_sink=True)
    _add_selection(dlq_sub.add_parser("purge", help="delete dead letters"), all_help="every dead letter")

    sandbox = sub.add_parser("sandbox", help="run the loopback Amplitude and Brevo simulators")
    from .sandbox.server import add_sandbox_arguments

    add_sandbox_arguments(sandbox)

    demo = sub.add_parser("demo", help="sandbox + daemon on sample data, then a summary of what reached Brevo")
    from .demo import add_demo_arguments

    add_demo_arguments(demo)
    return parser


def _hour(text: str) -> datetime:
    try:
        return parse_hour(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an hour ({exc})") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "check-config": cmd_check_config,
        "status": cmd_status,
        "dlq": cmd_dlq,
        "sandbox": cmd_sandbox,
        "backfill": cmd_backfill,
        "demo": cmd_demo,
    }[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _load(args: argparse.Namespace, *, secrets: bool = True) -> Config | None:
    """The config of `-c`, or None after printing every error; ``secrets=False``: see load_config()."""
    path = args.config or default_config_path()
    try:
        return load_config(path, secrets=secrets)
    except ConfigError as exc:
        print(f"amplitude-brevo: invalid config {path}:", file=sys.stderr)
        for error in exc.errors:
            print(f"  - {error}", file=sys.stderr)
        return None


def _log_not_built(cfg: Config) -> None:
    """One `config.not_built` warning per configured capability this version ignores (after logging is set)."""
    log = get_logger("config")
    for message in unbuilt_settings(cfg):
        log.warning("config.not_built", detail=message)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    sys.stdout.write(render_config(cfg))
    # Valid all the same (exit 0), but the operator should not expect these settings to do anything.
    for message in unbuilt_settings(cfg):
        print(f"amplitude-brevo: warning: {message}", file=sys.stderr)
    if args.online:
        return EXIT_OK if asyncio.run(_online_checks(cfg)) else EXIT_RUNTIME
    return EXIT_OK


# What `check-config --online` asks Amplitude for: one hour long before any project, which has no data. The
# Export API answers 404 "Raw data files were not found" with keys it accepts, 401/403 with keys it does not.
_PROBE_HOUR = "20000101T00"
_ONLINE_TIMEOUT = 30.0
_ONLINE_ATTEMPTS = 3  # a 429 / 5xx / connection error is tried again this often before "could not check"


async def _online_checks(cfg: Config) -> bool:
    """`check-config --online`: the Brevo key and attribute model, then the Amplitude keys; one line per check
    on stdout (secrets masked). True when everything is usable. Nothing is written to either service."""
    import aiohttp

    from .config.errors import scrub

    secrets = secret_values(cfg)

    def say(line: str) -> None:
        print(scrub(line, secrets), flush=True)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_ONLINE_TIMEOUT)) as session:
        brevo_ok = await _check_brevo(session, cfg, say)
        amplitude_ok = await _check_amplitude(session, cfg, say)
    return brevo_ok and amplitude_ok


async def _check_brevo(session, cfg: Config, say) -> bool:  # type: ignore[no-untyped-def]
    """The key (`GET /contacts/attributes` answers), then every attribute the config writes exists."""
    import aiohttp

    from .config import format_path
    from .contacts.attributes import COMPUTED_CATEGORIES, AttributeModel, identity_target
    from .retry import Backoff
    from .sinks.brevo_client import URL_HINT, BrevoClient, Outcome, validate_response
    from .sinks.budgets import Budgets

    brevo = cfg.connectors.brevo
    client = BrevoClient(session, base_url=brevo.api_url, api_key=brevo.api_key, budgets=Budgets(cfg.rate_limits))
    backoff = Backoff(base=0.2, cap=1.0)
    reason = ""
    for attempt in range(1, _ONLINE_ATTEMPTS + 1):
        try:
            response = await client.send_once("GET", "/contacts/attributes", budget="brevo_contacts")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = f"cannot reach connectors.brevo.api_url ({type(exc).__name__}: {exc})"
        else:
            if response.status in (401, 403):
                say(f"brevo api key: Brevo rejected connectors.brevo.api_key (HTTP {response.status} "
                    f"{response.message})")
                return False
            outcome = validate_response(response.status)
            if outcome is Outcome.OK:
                break
            reason = f"HTTP {response.status} {response.message}"
            if outcome is Outcome.UNAVAILABLE:
                reason += f"; {URL_HINT}"
            if outcome is not Outcome.RETRY:
                say(f"brevo api key: could not check ({reason})")
                return False
        if attempt >= _ONLINE_ATTEMPTS:
            say(f"brevo api key: could not check ({reason})")
            return False
        await backoff.sleep(attempt)
    say("brevo api key: ok")

    model = AttributeModel.from_response(response.body)
    wanted = [
        (format_path(("property_mapping", source)), target.strip().upper())
        for source, target in cfg.property_mapping.items()
        if not identity_target(target)
    ]
    if cfg.sync.revenue:
        for key in ("ltv_attribute", "count_attribute"):
            name = getattr(cfg.revenue, key)
            if name:
                wanted.append((f"revenue.{key}", name))
    ok = True
    for key, name in wanted:
        attribute = model.get(name)
        if attribute is None:
            if brevo.create_attributes:
                say(f"{key} -> {name}: missing in Brevo (created at start: connectors.brevo.create_attributes is true)")
            else:
                say(f"{key} -> {name}: missing in Brevo")
                ok = False
        elif attribute.category in COMPUTED_CATEGORIES:
            say(f"{key} -> {name}: a {attribute.category} attribute, computed by Brevo; nothing can write it")
            ok = False
        else:
            say(f"attribute {name}: ok ({attribute.type or attribute.category})")
    return ok


async def _check_amplitude(session, cfg: Config, say) -> bool:  # type: ignore[no-untyped-def]
    """The project keys: one Export request for an hour without data (HTTP basic auth api_key:secret_key)."""
    import base64

    import aiohttp

    from .clients.amplitude import UNAVAILABLE_HINT, ExportStatus, validate_export_status
    from .retry import Backoff

    amp = cfg.connectors.amplitude
    if not amp.enabled:
        say("amplitude keys: skipped (connectors.amplitude.enabled is false)")
        return True
    if amp.api_key is None or amp.secret_key is None:
        say("amplitude keys: not set (connectors.amplitude.api_key / secret_key)")
        return False
    token = base64.b64encode(f"{amp.api_key.reveal()}:{amp.secret_key.reveal()}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    url = f"{amp.api_url.rstrip('/')}/api/2/export"
    backoff = Backoff(base=0.2, cap=1.0)
    reason = ""
    for attempt in range(1, _ONLINE_ATTEMPTS + 1):
        try:
            async with session.get(url, params={"start": _PROBE_HOUR, "end": _PROBE_HOUR}, headers=headers) as resp:
                status = resp.status
                body = b""
                while len(body) < 2048:  # the start of the answer is enough (a 200 would be a zip)
                    chunk = await resp.content.read(2048 - len(body))
                    if not chunk:
                        break
                    body += chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = f"cannot reach connectors.amplitude.api_url ({type(exc).__name__}: {exc})"
            outcome = ExportStatus.RETRY
        else:
            text = " ".join(body.decode("utf-8", "replace").split())[:200]
            if status in (401, 403):
                say(f"amplitude keys: Amplitude rejected connectors.amplitude.api_key / secret_key "
                    f"(HTTP {status}: {text})")
                return False
            outcome = validate_export_status(status, body)
            if outcome in (ExportStatus.OK, ExportStatus.EMPTY):
                say("amplitude keys: ok")
                return True
            reason = f"HTTP {status}: {text}"
            if outcome is ExportStatus.UNAVAILABLE:
                reason = f"HTTP {status} without the Export API's no-data message; {UNAVAILABLE_HINT}"
        if outcome is not ExportStatus.RETRY or attempt >= _ONLINE_ATTEMPTS:
            break
        await backoff.sleep(attempt)
    say(f"amplitude keys: could not check ({reason})")
    return False


def cmd_run(args: argparse.Namespace) -> int:
    from .app import Daemon, StartupError
    from .components import default_components

    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    configure_logging(cfg.logging.level, cfg.logging.format, secret_values(cfg))
    _log_not_built(cfg)
    if args.dry_run:
        from functools import partial

        factory = partial(default_components, dry_run=True)
    else:
        factory = default_components
    daemon = Daemon(cfg, config_path=args.config or default_config_path(), components=factory)
    tune_runtime()
    try:
        return asyncio.run(daemon.serve())
    except StartupError as exc:
        get_logger("daemon").error("daemon.startup_failed", error=str(exc))
        return EXIT_RUNTIME


def _with_state(args: argparse.Namespace, action, *, secrets: bool, lock: bool):  # type: ignore[no-untyped-def]
    """Run ``action(store, cfg)`` on the state file.

    Reading commands pass ``secrets=False, lock=False``: an operator's shell has neither the API key
    variables nor $CREDENTIALS_DIRECTORY, and they must work next to the running daemon. Commands that
    send (dlq replay) load the keys and take the state file's lock like the daemon does.
    """
    from .state import StateError, StateStore

    cfg = _load(args, secrets=secrets)
    if cfg is None:
        return EXIT_USAGE
    configure_logging("warning", "auto", secret_values(cfg), stream=sys.stderr)
    if not Path(cfg.state.path).exists():
        print(f"amplitude-brevo: no state file at {cfg.state.path} (the daemon has not run yet)", file=sys.stderr)
        return EXIT_RUNTIME

    async def go() -> int:
        store = await StateStore.open(cfg.state.path, lock=lock)
        try:
            return await action(store, cfg)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StateError as exc:
        print(f"amplitude-brevo: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _wall_now() -> float:
    """Now, in epoch seconds (a test moves it)."""
    return time.time()


def _budget_report(cfg: Config, usage: Mapping[str, list[tuple[int, int]]], now: float) -> dict[str, dict]:
    """Per budget: requests in the last whole UTC minute and the 60 before now's minute, with the allowances."""
    this_minute = int(now // 60)
    report: dict[str, dict] = {}
    names = [*cfg.rate_limits, *sorted(set(usage) - set(cfg.rate_limits))]
    for name in names:
        rows = usage.get(name, [])
        entry: dict = {
            "last_minute": sum(n for minute, n in rows if minute == this_minute - 1),
            "last_hour": sum(n for minute, n in rows if this_minute - 60 <= minute < this_minute),
        }
        limit = cfg.rate_limits.get(name)
        if limit is not None:
            requests, per = int(limit.requests), float(limit.per)
            entry["rate"] = {"requests": requests, "per": per}
            entry["last_minute_allowance"] = requests * 60 / per
            entry["last_hour_allowance"] = requests * 3600 / per
        report[name] = entry
    return report


def _allowance(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:,.1f}"


def _against(used: int, allowance: float | None, span: str) -> str:
    """`312 / 600 last minute (52 %)`."""
    if allowance is None:
        return f"{used:,} {span}"
    return f"{used:,} / {_allowance(allowance)} {span} ({used / allowance:.0%})".replace("%)", " %)")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def cmd_status(args: argparse.Namespace) -> int:
    from .state.contacts import CONTACTS_CHECKPOINT

    async def action(store, cfg: Config) -> int:  # type: ignore[no-untyped-def]
        now = _wall_now()
        report = {
            "state": str(store.path),
            "schema_version": store.schema_version,
            "checkpoints": await store.checkpoints(),
            "spool_depth": await store.spool_depth(),
            "dead_letters": await store.dead_letter_counts(),
        }
        report["budgets"] = _budget_report(cfg, await store.usage_since(int(now // 60) - 60), now)
        queues, queues_at = await store.backlogs()
        written = report["checkpoints"].get(CONTACTS_CHECKPOINT)
        report["backlogs"] = {
            "contacts_pending": await store.contacts_pending(written),
            "queues": queues,
            "queues_at": _iso(queues_at),
            "queues_age_seconds": None if queues_at is None else round(max(0.0, now - queues_at), 1),
        }
        tail = report["checkpoints"].get("export.next_hour")
        if tail:
            next_hour = parse_hour(tail)
            # Everything before next_hour is delivered: the lag is how far that point is behind now.
            report["export_lag_seconds"] = max(0, int((datetime.now(UTC) - next_hour).total_seconds()))
        if args.json:
            print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
            return EXIT_OK
        print(f"state file      {report['state']} (schema v{report['schema_version']})")
        print("checkpoints")
        for name, value in sorted(report["checkpoints"].items()) or [("(none)", "")]:
            print(f"  {name:<28} {value}")
        if "export_lag_seconds" in report:
            print(f"export lag      {report['export_lag_seconds'] / 3600:.1f} h behind now "
                  f"(includes export.lag; queue depth and rates are on /metrics)")
        print(f"ingest spool    {report['spool_depth']} waiting")
        print("dead letters")
        for source, count in sorted(report["dead_letters"].items()) or [("(none)", 0)]:
            print(f"  {source:<28} {count}")
        print("Brevo budgets   (requests sent, whole UTC minutes, against the configured rate_limits)")
        for name, b in report["budgets"].items():
            minute = _against(b["last_minute"], b.get("last_minute_allowance"), "last minute")
            hour = _against(b["last_hour"], b.get("last_hour_allowance"), "last hour")
            print(f"  {name:<20} {minute}, {hour}")
        backlogs = report["backlogs"]
        print("backlogs")
        print(f"  {'contacts pending write':<28} {backlogs['contacts_pending']:,}")
        if backlogs["queues_at"] is None:
            print(f"  {'queues':<28} (no snapshot yet: the daemon writes one every few seconds while it runs)")
        else:
            age = _age(backlogs["queues_age_seconds"])
            for name, depth in sorted(backlogs["queues"].items()) or [("(no queue)", 0)]:
                print(f"  {name + ' queued':<28} {depth:,} (as of {age} ago)")
        return EXIT_OK

    return _with_state(args, action, secrets=False, lock=False)


def cmd_dlq(args: argparse.Namespace) -> int:
    async def action(store, cfg: Config) -> int:  # type: ignore[no-untyped-def]
        if args.dlq_command == "list":
            letters = await store.list_dead_letters(source=args.source, include_replayed=args.all, limit=args.limit)
            if not letters:
                print("no dead letters")
            for dl in letters:
                flag = " (replayed)" if dl.replayed_at else ""
                print(f"{dl.id:>6}  {_iso(dl.created_at)}  {dl.source}/{dl.sink}  {dl.reason}{flag}")
            return EXIT_OK
        if args.dlq_command == "show":
            dl = await store.get_dead_letter(args.id)
            if dl is None:
                print(f"amplitude-brevo: no dead letter {args.id}", file=sys.stderr)
                return EXIT_RUNTIME
            print(f"id       {dl.id}\nsource   {dl.source}\nsink     {dl.sink}\ncreated  {_iso(dl.created_at)}")
            print(f"replayed {_iso(dl.replayed_at)}\nreason   {dl.reason}\nitem")
            try:
                print(orjson.dumps(orjson.loads(dl.item), option=orjson.OPT_INDENT_2).decode())
            except orjson.JSONDecodeError:
                print(dl.item.decode("utf-8", "replace"))
            return EXIT_OK
        if args.dlq_command == "replay":
            from .dlq import replay

            configure_logging(cfg.logging.level, "json" if not sys.stderr.isatty() else "console",
                              secret_values(cfg), stream=sys.stderr)
            result = await replay(cfg, store, ids=args.ids, source=args.source, sink=args.sink)
            for i in result.sent:
                print(f"{i:>6}  sent")
            for i, why in sorted(result.refused.items()):
                print(f"{i:>6}  refused: {why}")
            for i, why in sorted(result.not_replayable.items()):
                print(f"{i:>6}  not replayable: {why}")
            print(f"replayed {len(result.sent)}, refused {len(result.refused)}, "
                  f"not replayable {len(result.not_replayable)}")
            return EXIT_OK if not result.refused else EXIT_RUNTIME
        if args.dlq_command == "purge":
            count = await store.purge_dead_letters(ids=args.ids, source=args.source)
            print(f"purged {count} dead letters")
            return EXIT_OK
        raise AssertionError(args.dlq_command)

    sends = args.dlq_command == "replay"  # list, show and purge only read or delete local rows
    return _with_state(args, action, secrets=sends, lock=sends)


def cmd_backfill(args: argparse.Namespace) -> int:
    from .app import StartupError
    from .backfill import run_backfill

    if args.end < args.start:
        print("amplitude-brevo: --end must not be before --start", file=sys.stderr)
        return EXIT_USAGE
    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    configure_logging(cfg.logging.level, cfg.logging.format, secret_values(cfg))
    _log_not_built(cfg)
    tune_runtime()
    try:
        result = asyncio.run(run_backfill(cfg, start=args.start, end=args.end, dry_run=args.dry_run,
                                          config_path=args.config or default_config_path()))
    except StartupError as exc:
        get_logger("daemon").error("daemon.startup_failed", error=str(exc))
        return EXIT_RUNTIME
    summary = {
        "event": "backfill.summary",
        "start": hour_key(args.start), "end": hour_key(args.end),
        "complete": result.complete, "dry_run": args.dry_run, "seconds": round(result.seconds, 1),
        **result.source, **result.sink, "rate_limited": result.rate_limited,
    }
    print(orjson.dumps(summary).decode(), file=sys.stderr if sys.stdout.isatty() else sys.stdout)
    if sys.stdout.isatty():
        print(f"backfill {'complete' if result.complete else 'INCOMPLETE (run it again to resume)'}: "
              f"{result.source['rows_read']:,} rows read, {result.source['mapped']:,} mapped, "
              f"{result.sink['delivered']:,} delivered, {result.source['deduplicated']:,} deduplicated, "
              f"{result.source['dead_lettered'] + result.sink['dead_lettered']:,} dead-lettered "
              f"in {result.seconds:.1f} s")
    if result.exit_code:
        return result.exit_code
    return EXIT_OK if result.complete else EXIT_RUNTIME


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    tune_runtime()
    return asyncio.run(run_demo(args))


def cmd_sandbox(args: argparse.Namespace) -> int:
    from .sandbox.server import run_sandbox

    configure_logging("info", "auto")
    return asyncio.run(run_sandbox(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
