"""What the benchmark runs: the cases (link x cap x RTT), the images, its options, which meet which."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Case:
    link: str              # veth (site-b in a namespace behind a veth pair) | loopback (the lab as it is)
    capped: bool           # every flow capped at --cap-mbit at the transfer itself
    rtt_ms: float = 0.0    # > 0: every ssh connection to the head node goes through bench.delay_proxy


CASES = {
    "veth-capped": Case("veth", True),
    "veth-unshaped": Case("veth", False),
    "veth-10ms-capped": Case("veth", True, 10.0),
    "veth-10ms": Case("veth", False, 10.0),
    "veth-50ms-capped": Case("veth", True, 50.0),
    "veth-50ms": Case("veth", False, 50.0),
    "loopback": Case("loopback", False),
    "loopback-capped": Case("loopback", True),
}
DEFAULT_CASES = ["veth-capped", "veth-unshaped", "veth-10ms-capped", "veth-10ms", "veth-50ms-capped",
                 "veth-50ms"]
FLOWS = ("ceiling", "glance-floor", "legacy", "migratio")
IMAGES = ("realistic-qcow2", "random-qcow2", "realistic-raw", "random-raw")  # <kind>-<stored format>
DEFAULT_IMAGES = ["realistic-qcow2", "random-qcow2", "realistic-raw"]


@dataclass
class Options:
    sizes: list[str] = field(default_factory=lambda: ["2G"])
    data_percent: float = 15.0
    cap_mbit: float | None = 200.0
    cases: list[str] = field(default_factory=lambda: list(DEFAULT_CASES))
    flows: list[str] = field(default_factory=lambda: list(FLOWS))
    images: list[str] = field(default_factory=lambda: list(DEFAULT_IMAGES))
    raw_store_rtts: list[float] = field(default_factory=lambda: [0.0])  # raw-store images only at these RTTs
    streams: str | None = None   # migratio's site conf `streams` (N|auto); None: the key is not written
    dedupe_counts: list[int] = field(default_factory=lambda: [10, 100, 1000])
    dedupe_sample: int = 25
    ceiling_cipher: str = "aes128-gcm@openssh.com"
    subnet: str | None = None
    proxy_overhead: bool = True  # measure the ceiling direct vs. through the proxy at 0 ms

    @property
    def cap_bytes(self) -> float | None:
        return self.cap_mbit * 1e6 / 8 if self.cap_mbit else None

    @property
    def cap_kib(self) -> int | None:
        return int(self.cap_bytes // 1024) if self.cap_mbit else None

    def check(self) -> None:
        for name, given, known in (("case", self.cases, CASES), ("image", self.images, IMAGES),
                                   ("flow", self.flows, FLOWS)):
            unknown = [x for x in given if x not in known]
            if unknown:
                raise ValueError(f"unknown {name} {unknown[0]!r} (known: {', '.join(known)})")
        if self.streams is not None and not (self.streams == "auto" or self.streams.isdigit()):
            raise ValueError(f"--streams must be a number or 'auto', not {self.streams!r}")

    def site_extra(self, capped: bool) -> dict:
        """Keys added to migratio's site conf for a case (only those that are set)."""
        extra: dict = {}
        if capped and self.cap_kib:
            extra["bandwidth_limit"] = self.cap_kib
        if self.streams is not None:
            extra["streams"] = int(self.streams) if self.streams.isdigit() else self.streams
        return extra


def runs_on(case: Case, image_spec: str, opts: Options) -> bool:
    """Whether an image (`<kind>-<store>`) runs in a case: raw stores only at opts.raw_store_rtts."""
    return not image_spec.endswith("-raw") or case.rtt_ms in opts.raw_store_rtts


def split_spec(spec: str) -> tuple[str, str]:
    kind, _, store = spec.rpartition("-")
    return kind, store
