"""One typed configuration for every part of the service.

Settings come from three layers, later ones winning:

1. the defaults declared on the dataclasses below;
2. a TOML file (``--config FILE``; else ``$MONITOR_CONFIG``; else ``config/monitor.toml`` when it
   exists in the working directory);
3. environment variables ``MONITOR_<SECTION>__<KEY>`` (e.g. ``MONITOR_KAFKA__GROUP_ID=scorers``),
   parsed to the field's type: lists are comma-separated, booleans accept true/false/1/0/yes/no/on/off,
   and an empty value sets an optional field to ``None``.

Every value is checked once, here, at the boundary: an unknown section or key, a value of the wrong
type or one out of range raises :class:`~monitor.errors.ConfigError` naming the key and the problem
(all problems at once). Each section is a plain dataclass; a part of the service adds its own
settings by adding a field with a default and a ``_doc`` metadata entry to its section, and
documenting it in ``config/monitor.toml`` and ``docs/configuration.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from monitor.errors import ConfigError
from monitor.names import INDICATORS

ENV_PREFIX = "MONITOR_"
ENV_SEPARATOR = "__"
DEFAULT_CONFIG_PATH = Path("config/monitor.toml")
CONFIG_PATH_ENV = "MONITOR_CONFIG"

# Shown as '***' by Settings.redacted(): never print these.
SECRET_KEYS = frozenset({"sasl_plain_password", "ssl_password", "webhook_secret", "session_secret"})


def setting(default: Any, doc: str, *, choices: Iterable[Any] | None = None, minimum: float | None = None,
            maximum: float | None = None, non_empty: bool = False,
            check: Callable[[str, str, Any], list[str]] | None = None) -> Any:
    """A dataclass field with its documentation and the checks its value must pass; `check(section,
    key, value)` returns further problems with the value alone (each naming the key), none when good."""
    metadata = {"doc": doc, "choices": tuple(choices) if choices is not None else None,
                "minimum": minimum, "maximum": maximum, "non_empty": non_empty, "check": check}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# --- checks of one value that need no network --------------------------------------------------


def _credentials(section: str, key: str, value: Any) -> list[str]:
    from monitor.web.auth import read_credentials  # the one rule for 'NAME:ROLE:HASH' entries (stdlib only)

    return read_credentials(value, key)[1]


SESSION_SECRET_MIN_LENGTH = 32


def _session_secret(section: str, key: str, value: Any) -> list[str]:
    if value is not None and len(value) < SESSION_SECRET_MIN_LENGTH:
        return [f"[{section}] {key}: must be at least {SESSION_SECRET_MIN_LENGTH} characters"]
    return []


# --- sections ----------------------------------------------------------------------------------


@dataclass
class ModelSettings:
    spec: str = setting("demo", "Which classifier to load: 'demo' (the bundled Fashion-MNIST ResNet) or a "
                                "model spec understood by monitor.classifiers (see docs/configuration.md).")
    weights: str | None = setting(None, "Path to the weights file (state dict) for the spec; none for 'demo'.")
    num_classes: int | None = setting(None, "Number of classes of the model's head, when the spec needs it.",
                                      minimum=1)
    device: str = setting("auto", "Where to score: 'auto' picks CUDA when present, else the CPU.",
                          choices=("auto", "cpu", "cuda"))
    odin: bool = setting(False, "Also compute ODIN (one extra backward pass per batch, about 3x the cost).")
    cache_dir: str = setting("var/cache", "Where per-model calibration (1C-Sum noise statistics) is cached.")
    calibration_samples: int = setting(2048, "Uniform-noise images drawn to standardise the 1C-Sum members (once "
                                             "per model, then cached); fewer start faster but are noisier.",
                                       minimum=16, maximum=1_000_000)
    input_shape: list[int] | None = setting(None, "Input the model expects, [C, H, W]; none takes it from the JSON "
                                                  "file beside the weights, else the spec's default.", minimum=1)
    mean: list[float] | None = setting(None, "Per-channel input normalisation mean (pixels in [0, 1]); none: "
                                             "from the JSON beside the weights, else the spec's default.")
    std: list[float] | None = setting(None, "Per-channel input normalisation std, each > 0; none: as for mean.")
    head: str | None = setting(None, "Dotted module name of the classifier's head nn.Linear when it is not the "
                                     "model's last nn.Linear (e.g. 'classifier.1').")
    torch_threads: int | None = setting(None, "CPU threads torch may use for scoring; none keeps torch's choice "
                                              "(one per core). Lower it when the CPU is shared with other work.",
                                        minimum=1, maximum=1024)


@dataclass
class KafkaSettings:
    bootstrap_servers: list[str] = setting(["127.0.0.1:9092"], "Brokers to bootstrap from, host:port.",
                                           non_empty=True)
    topics: list[str] = setting(["images"], "Topics of image messages to consume.", non_empty=True)
    group_id: str = setting("ood-monitor", "Consumer group: processes sharing it split the partitions.")
    client_id: str = setting("ood-monitor", "Client id shown in broker logs and metrics.")
    api_version: str = setting("auto", "Broker protocol version, e.g. '0.9', '2.8', '3.7'; 'auto' probes "
                                       "the broker (pin it for brokers older than 0.10).")
    security_protocol: str = setting("PLAINTEXT", "How to reach the brokers.",
                                     choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    ssl_cafile: str | None = setting(None, "CA bundle (PEM) that signed the brokers' certificates.")
    ssl_certfile: str | None = setting(None, "Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: str | None = setting(None, "Private key (PEM) of the client certificate.")
    ssl_password: str | None = setting(None, "Password of the private key, if encrypted.")
    ssl_check_hostname: bool = setting(True, "Check that the broker certificate matches its host name.")
    sasl_mechanism: str | None = setting(None, "SASL mechanism for SASL_* protocols.",
                                         choices=(None, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
    sasl_plain_username: str | None = setting(None, "SASL user name.")
    sasl_plain_password: str | None = setting(None, "SASL password (prefer the environment variable "
                                                    "MONITOR_KAFKA__SASL_PLAIN_PASSWORD).")
    session_timeout_ms: int = setting(10000, "Group session timeout: how soon a dead consumer's partitions "
                                             "move to the others.", minimum=1000, maximum=300000)
    max_poll_records: int = setting(500, "Most messages fetched by one poll.", minimum=1, maximum=100000)
    max_poll_interval_ms: int = setting(300000, "Longest time between two polls before the consumer is "
                                                "taken out of its group (brokers from 0.10.1). The daemon "
                                                "polls on while it waits for the database, with its "
                                                "partitions paused.", minimum=1000, maximum=3600000)
    auto_offset_reset: str = setting("earliest", "Where a group with no committed offset starts.",
                                     choices=("earliest", "latest"))
    dead_letter_topic: str = setting("images.dead-letter", "Topic that receives messages that cannot be "
                                                           "scored, with the reason (docs/daemon.md).")
    alerts_topic: str = setting("ood-monitor.alerts", "Topic that receives alert events as JSON.")
    request_timeout_ms: int = setting(30000, "How long a broker request may take before it is retried.",
                                      minimum=1000)
    connect_timeout_ms: int = setting(5000, "How long start-up waits to reach a broker and read the cluster's "
                                            "metadata before it stops with an error naming the brokers.",
                                      minimum=100, maximum=600000)

    def api_version_tuple(self) -> tuple[int, ...] | None:
        """kafka-python's form: (0, 9) for '0.9'; None for 'auto'."""
        if self.api_version == "auto":
            return None
        return tuple(int(part) for part in self.api_version.split("."))


@dataclass
class StreamSettings:
    batch_size: int = setting(64, "Images scored together (one forward pass).", minimum=1, maximum=65536)
    max_batch_wait_ms: int = setting(200, "Longest time a partial batch waits for more images before it is "
                                          "scored anyway.", minimum=0, maximum=600000)
    decode_threads: int = setting(2, "Threads decoding images while the model scores; 0 runs every step of a "
                                     "worker on one thread, one after the other (no Python thread beside the "
                                     "Scorer; run several workers instead).", minimum=0, maximum=64)
    indicator: str = setting("1C-Sum", "The indicator compared with the threshold to flag a sample.",
                             choices=INDICATORS)
    default_threshold: float | None = setting(None, "Threshold used until one is fitted and stored; none "
                                                    "flags nothing until then.")
    threshold_refresh_s: float = setting(10.0, "How often the daemon looks for a newly stored threshold.",
                                         minimum=0.0)
    store_retry_initial_s: float = setting(0.5, "First wait after a failed database write.", minimum=0.0)
    store_retry_max_s: float = setting(30.0, "Longest wait between database retries (the wait doubles).",
                                       minimum=0.0)
    shutdown_grace_s: float = setting(20.0, "On SIGTERM, how long a worker may take to stop: its batch in "
                                            "flight stored, published and committed, its clients closed. What "
                                            "is still held up then is abandoned (and replayed).",
                                      minimum=0.0)
    http: bool = setting(True, "Serve /healthz, /readyz, /metrics (and, all-in-one, the web app) on [web] "
                               "host:port; the scheduler role serves its probes there too.")
    workers: int = setting(0, "Scoring worker processes of `ood-monitor run` on this machine, each a whole "
                              "pipeline and a member of the consumer group; 0 picks from the device and the "
                              "cores (docs/daemon.md, \"Scaling\").", minimum=0, maximum=256)


@dataclass
class ImagingSettings:
    max_bytes: int = setting(20 * 1024 * 1024, "Largest message value accepted, in bytes.", minimum=1)
    max_pixels: int = setting(40_000_000, "Largest decoded image (width x height) accepted. Pictures above "
                                          "178,956,970 pixels are refused whatever this says (Pillow's own "
                                          "limit); arrays follow this alone.", minimum=1)
    apply_exif_orientation: bool = setting(False, "Turn JPEG, PNG and WebP pictures upright by their EXIF "
                                                  "orientation before scoring. Off, as torchvision's decode_image "
                                                  "and PIL's Image.open: set it as your model's own preprocessing "
                                                  "does.")
    device_decode: str = setting("auto", "Decode JPEG messages in batches on the model's device (torchvision's "
                                         "nvJPEG decoder on a GPU), after the same checks of their header: "
                                         "auto (on a GPU), on, off.", choices=("auto", "on", "off"))


@dataclass
class StoreSettings:
    url: str = setting("sqlite:///var/ood-monitor.db", "SQLAlchemy database URL: sqlite:///FILE or "
                                                        "postgresql+psycopg://USER@HOST:PORT/DB.")
    keep_image_share: float = setting(0.05, "Share of unflagged images whose bytes are kept for labelling "
                                            "(flagged ones always are).", minimum=0.0, maximum=1.0)
    auto_upgrade_sqlite: bool = setting(True, "Bring an embedded SQLite database up to date at start "
                                              "(PostgreSQL always needs `ood-monitor db upgrade`).")
    connect_timeout_s: int = setting(5, "How long a connection to PostgreSQL may take (at start-up and "
                                        "after), in whole seconds (libpq counts at least 2).",
                                     minimum=1, maximum=600)


@dataclass
class AlertsSettings:
    on_flagged: bool = setting(True, "Publish an alert for every flagged sample.")
    webhook_url: str | None = setting(None, "Also POST every alert as JSON to this URL.")
    webhook_retries: int = setting(3, "Retries of a failed webhook call (then it is logged and dropped).",
                                   minimum=0, maximum=20)
    webhook_timeout_s: float = setting(5.0, "Timeout of one webhook call.", minimum=0.1)
    webhook_backoff_s: float = setting(0.5, "First wait between webhook retries (doubles each time).",
                                       minimum=0.0)


@dataclass
class WebSettings:
    host: str = setting("127.0.0.1", "Address the HTTP server listens on (0.0.0.0 for all).")
    port: int = setting(8080, "Port of the HTTP server.", minimum=0, maximum=65535)
    accounts: list[str] = setting([], "Operator logins for the web pages, each 'NAME:ROLE:HASH' with ROLE one of "
                                      "viewer, labeller, admin and HASH from `ood-monitor web hash-password`.",
                                  check=_credentials)
    tokens: list[str] = setting([], "API bearer tokens, each 'NAME:ROLE:HASH' (the hash of the token, made by "
                                    "`ood-monitor web hash-password`); NAME is recorded on the labels it gives.",
                                check=_credentials)
    session_secret: str | None = setting(None, "Key that signs session cookies (at least 32 characters); set it "
                                               "so sessions survive restarts and work across replicas. None: a "
                                               "random key per process.", check=_session_secret)
    session_lifetime_s: float = setting(28800.0, "How long a login lasts before the operator must log in again.",
                                        minimum=60.0)
    cookie_secure: bool = setting(False, "Send the session cookie over HTTPS only (set true behind TLS).")
    window_hours: float = setting(24.0, "The 'current window' of the pages: overview chart, percentiles, "
                                        "score histogram.", minimum=0.01)
    page_size: int = setting(48, "Samples per page of the flagged queue (a request may ask up to 200).",
                             minimum=1, maximum=200)
    max_failed_logins: int = setting(10, "Failed logins or unknown API tokens from one client address within "
                                         "5 minutes before it is answered 429 until the window passes.",
                                     minimum=1, maximum=100000)


@dataclass
class JobsSettings:
    enabled: bool = setting(True, "Run the scheduled jobs in a process of the all-in-one `ood-monitor run` "
                                  "(one leader per database); `ood-monitor scheduler` always runs them.")
    refit_every_s: int = setting(3600, "Seconds between threshold re-fits (0: never on schedule; "
                                       "`ood-monitor refit` still works).", minimum=0)
    refit_method: str = setting("two-means", "How the threshold is fitted: 'proportion' (flag the expected "
                                             "share), 'two-means' (1-D 2-means split) or 'extreme-value'.",
                                choices=("proportion", "two-means", "extreme-value"))
    refit_window_samples: int | None = setting(10000, "Re-fit on the last N scored samples (used when "
                                                      "refit_window_hours is unset).", minimum=1)
    refit_window_hours: float | None = setting(None, "Re-fit on the samples of the last T hours; when set, "
                                                     "it replaces refit_window_samples.", minimum=0.001)
    expected_share: float = setting(0.05, "Expected share p of OOD inputs: the proportion method flags it and "
                                          "the rate alert compares the flagged share with it.",
                                    minimum=1e-6, maximum=0.999999)
    extreme_value_q: float = setting(0.001, "Extreme-value method: tail probability q of the fitted ID "
                                            "distribution above the threshold.", minimum=1e-9, maximum=0.5)
    min_samples: int = setting(200, "Fewest samples a re-fit accepts; with fewer the old threshold stays "
                                    "and the job run says why.", minimum=2)
    min_labels_for_weights: int = setting(20, "Labels of EACH kind (ID and OOD) in the window needed to "
                                              "re-fit the 1C-Sum weights as well.", minimum=2)
    rate_every_s: int = setting(60, "Seconds between checks of the flagged share (0: no rate alert).",
                                minimum=0)
    rate_window_s: int = setting(900, "The rate alert tests the samples scored in the last this many "
                                      "seconds.", minimum=1)
    rate_min_samples: int = setting(50, "Fewest samples in the window for the rate test to run.", minimum=1)
    rate_alpha: float = setting(0.001, "Significance of the one-sided binomial test of the flagged share "
                                       "against expected_share.", minimum=1e-12, maximum=0.5)
    report_every_hours: float = setting(24.0, "Length of a drift report period; a report is made when each "
                                              "period ends (0: no scheduled reports).", minimum=0.0)
    report_dir: str = setting("var/reports", "Directory where drift reports (self-contained HTML) are "
                                             "written.")
    reference_hours: float = setting(168.0, "Reference window of the drift report: this many hours just "
                                            "before the period.", minimum=0.001)
    drift_alpha: float = setting(0.01, "Family-wise significance of the drift tests (KS per indicator, "
                                       "Holm-corrected).", minimum=1e-12, maximum=0.5)
    drift_min_effect: float = setting(0.1, "Smallest KS statistic D that counts as drift (a tiny shift is "
                                           "significant on a busy stream but not worth an alert).",
                                      minimum=0.0, maximum=1.0)
    drift_min_samples: int = setting(30, "Fewest values of an indicator in each window for it to be "
                                         "compared.", minimum=2)
    report_top_samples: int = setting(24, "Thumbnails of the most OOD samples shown in a report.",
                                      minimum=0, maximum=500)
    retention_every_s: int = setting(3600, "Seconds between retention passes ([retention] policy; 0: never).",
                                     minimum=0)


def _share_factor(section: str, key: str, value: Any) -> list[str]:
    if not value > 1.0:
        return [f"[{section}] {key}: {value} must be above 1 (how many times the flagged share may move)"]
    return []


@dataclass
class ThresholdsSettings:
    activation: str = setting("auto", "What a re-fit does with its threshold: 'auto' activates it; 'propose' "
                                      "stores it as a proposal that waits for an admin's approval; 'guarded' "
                                      "activates it unless its shadow evaluation shows labelled mistakes "
                                      "rising or the flagged share moving by more than guard_max_share_factor, "
                                      "and then proposes it with an alert saying why.",
                              choices=("auto", "propose", "guarded"))
    guard_max_share_factor: float = setting(2.0, "Guarded activation: how many times the flagged share of "
                                                 "the window may move, up or down, before a fit waits for "
                                                 "approval (above 1).", check=_share_factor)
    proposal_ttl_hours: float = setting(72.0, "A waiting proposal expires (never activates) after this many "
                                              "hours.", minimum=0.01)
    per_class: bool = setting(False, "The re-fit gives each predicted class with at least min_class_samples "
                                     "samples in the window its own threshold, steered by that class's "
                                     "labels; the global threshold judges the other classes. The daemon "
                                     "judges each sample by its predicted class's threshold.")
    min_class_samples: int = setting(100, "Fewest samples of a predicted class in the window for it to get "
                                          "its own threshold (with per_class).", minimum=2)


@dataclass
class RetentionSettings:
    score_days: int = setting(90, "Score and reject rows older than this are deleted.", minimum=1)
    image_days: int = setting(30, "Kept image bytes older than this are deleted (rows stay).", minimum=1)
    max_samples: int | None = setting(None, "Keep at most this many score rows (the newest, with their labels "
                                            "and images); None: no count limit, only score_days.", minimum=0)
    max_images: int | None = setting(None, "Keep the image bytes of at most this many samples (the newest); "
                                           "None: no count limit, only image_days.", minimum=0)


@dataclass
class LoggingSettings:
    level: str = setting("INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = setting("text", "'json' writes one JSON object per line (for log collectors).",
                          choices=("text", "json"))


@dataclass
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)
    imaging: ImagingSettings = field(default_factory=ImagingSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    alerts: AlertsSettings = field(default_factory=AlertsSettings)
    web: WebSettings = field(default_factory=WebSettings)
    jobs: JobsSettings = field(default_factory=JobsSettings)
    thresholds: ThresholdsSettings = field(default_factory=ThresholdsSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    # Where the file layer came from (None: defaults and environment only).
    source: str | None = field(default=None, compare=False)

    def redacted(self) -> dict[str, dict[str, Any]]:
        """Every section as a dict, secrets replaced by '***': safe to log or print."""
        out: dict[str, dict[str, Any]] = {}
        for name in section_names():
            values = dataclasses.asdict(getattr(self, name))
            out[name] = {key: ("***" if key in SECRET_KEYS and value else value) for key, value in values.items()}
        return out


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Settings) if f.name != "source"]


def section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {name: hints[name] for name in section_names()}


# --- parsing and validation ---------------------------------------------------------------------


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return members[0], len(members) < len(typing.get_args(annotation))
    return annotation, False


def _type_name(annotation: Any) -> str:
    inner, optional = _unwrap_optional(annotation)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        name = "a list of " + {str: "strings", int: "integers", float: "numbers"}[item]
    else:
        name = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true/false)"}[inner]
    return name + (" or none" if optional else "")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_environment(text: str, annotation: Any) -> Any:
    """Environment strings -> the field's type; raises ValueError with what was expected."""
    inner, optional = _unwrap_optional(annotation)
    stripped = text.strip()
    if optional and stripped in {"", "none", "null"}:
        return None
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        return [_from_environment(part.strip(), item) for part in stripped.split(",") if part.strip()]
    if inner is bool:
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValueError
    if inner is int:
        return int(stripped)
    if inner is float:
        return float(stripped)
    return text


def _coerce(value: Any, annotation: Any) -> Any:
    """A TOML value -> the field's type, or ValueError. No silent conversions between kinds."""
    inner, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ValueError
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if isinstance(value, str) and item is str:  # one topic / one server written without brackets
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ValueError
        return [_coerce(element, item) for element in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError
    if inner is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise ValueError


def _check_range(section: str, key: str, value: Any, meta: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join("none" if choice is None else str(choice) for choice in choices)
        return f"[{section}] {key}: {value!r} is not one of {shown}"
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if meta.get("minimum") is not None and item < meta["minimum"]:
                return f"[{section}] {key}: {item} is below the minimum {meta['minimum']}"
            if meta.get("maximum") is not None and item > meta["maximum"]:
                return f"[{section}] {key}: {item} is above the maximum {meta['maximum']}"
    if isinstance(value, list) and not value and meta.get("non_empty"):
        return f"[{section}] {key}: must not be empty"
    return None


def _cross_checks(settings: Settings) -> list[str]:
    """Rules that involve more than one key."""
    problems = []
    model = settings.model
    if model.input_shape is not None and len(model.input_shape) != 3:
        problems.append(f"[model] input_shape: {model.input_shape} is not [C, H, W] (three integers)")
    for key in ("mean", "std"):
        values = getattr(model, key)
        if values is None:
            continue
        channels = model.input_shape[0] if model.input_shape is not None and len(model.input_shape) == 3 else None
        if channels is not None and len(values) != channels:
            problems.append(f"[model] {key}: has {len(values)} values but input_shape has {channels} channels")
        if key == "std" and any(value <= 0 for value in values):
            problems.append(f"[model] std: {values} has a value <= 0; every channel's std must be positive")
    if (model.mean is None) != (model.std is None):
        problems.append("[model] mean / std: give both or neither")
    kafka = settings.kafka
    if kafka.api_version != "auto":
        parts = kafka.api_version.split(".")
        if not (1 < len(parts) <= 3 and all(part.isdigit() for part in parts)):
            problems.append(f"[kafka] api_version: {kafka.api_version!r} is not 'auto' nor a version "
                            "such as '0.9' or '3.7'")
    if kafka.security_protocol.startswith("SASL") and kafka.sasl_mechanism is None:
        problems.append(f"[kafka] sasl_mechanism: required when security_protocol is {kafka.security_protocol}")
    if kafka.sasl_mechanism is not None and not kafka.security_protocol.startswith("SASL"):
        problems.append("[kafka] sasl_mechanism: set, but security_protocol is "
                        f"{kafka.security_protocol}, not SASL_PLAINTEXT or SASL_SSL")
    if kafka.sasl_mechanism is not None and (kafka.sasl_plain_username is None or kafka.sasl_plain_password is None):
        problems.append("[kafka] sasl_plain_username / sasl_plain_password: both are required with "
                        f"sasl_mechanism {kafka.sasl_mechanism}")
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(kafka, key)
        if path is not None and not Path(path).is_file():
            problems.append(f"[kafka] {key}: no such file {path}")
    for topic in (kafka.dead_letter_topic, kafka.alerts_topic):
        if topic in kafka.topics:
            problems.append(f"[kafka] topics: {topic!r} is also the dead-letter or alerts topic; "
                            "the daemon would consume its own output")
    jobs = settings.jobs
    if jobs.refit_window_hours is None and jobs.refit_window_samples is None:
        problems.append("[jobs] refit_window_samples / refit_window_hours: set one of them")
    if jobs.refit_window_samples is not None and jobs.refit_window_samples < jobs.min_samples:
        problems.append(f"[jobs] refit_window_samples: {jobs.refit_window_samples} is below "
                        f"min_samples {jobs.min_samples}; every re-fit would be refused")
    if settings.stream.store_retry_max_s < settings.stream.store_retry_initial_s:
        problems.append("[stream] store_retry_max_s: must not be below store_retry_initial_s")
    url = settings.store.url
    if not (url.startswith("sqlite") or url.startswith("postgresql")):
        problems.append(f"[store] url: {url!r} is neither a sqlite:/// nor a postgresql:// URL")
    return problems


def _apply(section_obj: Any, section: str, key: str, raw: Any, origin: str, problems: list[str],
           from_env: bool) -> None:
    fields = {f.name: f for f in dataclasses.fields(section_obj)}
    if key not in fields:
        problems.append(f"unknown key [{section}] {key}{_did_you_mean(key, fields)}{origin}")
        return
    annotation = typing.get_type_hints(type(section_obj))[key]
    try:
        value = _from_environment(raw, annotation) if from_env else _coerce(raw, annotation)
    except (ValueError, TypeError):
        problems.append(f"[{section}] {key}: expected {_type_name(annotation)}, got {raw!r}{origin}")
        return
    problem = _check_range(section, key, value, fields[key].metadata)
    if problem:
        problems.append(problem + origin)
        return
    check = fields[key].metadata.get("check")
    found = check(section, key, value) if check is not None else []
    if found:
        problems.extend(problem + origin for problem in found)
        return
    setattr(section_obj, key, value)


def settings_with_problems(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                           source: str | None = None) -> tuple[Settings, list[str]]:
    """Defaults, then `data` (the parsed TOML), then MONITOR_* variables of `environ`, and every
    problem found on the way. A key with a problem keeps its default, so the other checks go on
    (the start-up checks add theirs: docs/configuration.md, "Start-up checks")."""
    settings = Settings(source=source)
    problems: list[str] = []
    names = section_names()
    file_origin = f" (in {source})" if source else ""
    for section, values in data.items():
        if section not in names:
            problems.append(f"unknown section [{section}]{_did_you_mean(section, names)}{file_origin}")
            continue
        if not isinstance(values, Mapping):
            problems.append(f"[{section}]: expected a table of settings, got {values!r}{file_origin}")
            continue
        for key, raw in values.items():
            _apply(getattr(settings, section), section, key, raw, file_origin, problems, from_env=False)
    for variable, raw in sorted((environ or {}).items()):
        if not variable.startswith(ENV_PREFIX) or ENV_SEPARATOR not in variable:
            continue
        section, _, key = variable[len(ENV_PREFIX):].lower().partition(ENV_SEPARATOR)
        origin = f" (from ${variable})"
        if section not in names:
            problems.append(f"unknown section [{section}]{_did_you_mean(section, names)}{origin}")
            continue
        _apply(getattr(settings, section), section, key, raw, origin, problems, from_env=True)
    if not problems:  # rules across keys read the values of several keys: only once each is valid
        problems = _cross_checks(settings)
    return settings, problems


def invalid_configuration(problems: list[str]) -> ConfigError:
    """One error listing every problem, one per line."""
    return ConfigError("invalid configuration:\n  " + "\n  ".join(problems), problems=problems)


def settings_from_mapping(data: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                          source: str | None = None) -> Settings:
    """Defaults, then `data` (the parsed TOML), then MONITOR_* variables of `environ`."""
    settings, problems = settings_with_problems(data, environ, source)
    if problems:
        raise invalid_configuration(problems)
    return settings


def read_config_file(path: str | os.PathLike | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], str | None]:
    """The parsed TOML file (explicit `path`, $MONITOR_CONFIG or config/monitor.toml) and its name.

    An explicit path that does not exist is an error; the default file is optional.
    """
    environ = os.environ if environ is None else environ
    explicit = path if path is not None else environ.get(CONFIG_PATH_ENV) or None
    config_path = Path(explicit) if explicit is not None else DEFAULT_CONFIG_PATH
    if config_path.is_file():
        try:
            return tomllib.loads(config_path.read_text(encoding="utf-8")), str(config_path)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{config_path}: not valid TOML: {error}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{config_path}: cannot be read: {error}") from None
    if explicit is not None:
        raise ConfigError(f"--config: no such file {config_path}")
    return {}, None


def load_settings(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The service's settings: file (explicit `path`, $MONITOR_CONFIG or config/monitor.toml) + environment.

    An explicit path that does not exist is an error; the default file is optional.
    """
    environ = os.environ if environ is None else environ
    data, source = read_config_file(path, environ)
    return settings_from_mapping(data, environ, source)


def documented_settings() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, doc) for every setting: what the docs and the example file must list."""
    rows = []
    for section, section_type in section_types().items():
        for f in dataclasses.fields(section_type):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((section, f.name, default, f.metadata.get("doc", "")))
    return rows
