"""A centrifugal pump whose drive-end bearing wears out, as a Modbus TCP server, for predictive
maintenance development, tests and ``make demo-pdm``.

The machine runs, stops now and then, and degrades: from ``onset`` an outer-race defect makes
impacts at the bearing's ball-pass frequency (BPFO), ringing a structural resonance, that grow
until ``life`` (end of life: the bearing must have been replaced by then); late in the fault the
running-speed vibration rises too, as looseness sets in. Temperature follows load and friction.
``--time-scale`` compresses simulated time, so weeks of wear pass in minutes.

Register map (holding registers, 0-based; one unit id, 1):

====== ======= ====================================================================
address type    value
====== ======= ====================================================================
0      uint16  state: 0 stopped, 1 running, 2 alarm (trip)
1      uint16  shaft speed, rpm
2      int16   bearing temperature, 0.1 degC
3      uint16  part counter (cycles delivered), wraps 65535 → 0
4-5    float32 electrical power, kW (ABCD)
6-7    uint32  energy, 0.01 kWh, only grows
8      uint16  alarm code (0: none)
9      uint16  load, %
10-11  float32 simulated age, days (so a demo shows how far the wear has come)
100-   int16   vibration waveform: WAVEFORM_SAMPLES samples at SAMPLE_RATE Hz, 0.001 g per
               count, refreshed each cycle (acceleration at the drive-end bearing)
====== ======= ====================================================================

Command line::

    python -m simulators.degrading_pump --port 5021 --time-scale 14400 [--wear-law exponential]

The wear grows quadratically from onset by default; ``--wear-law exponential`` makes it the
two-stage exponential of bearing degradation. The prediction tests run both laws (four seeds
each); ``make demo-pdm`` uses the exponential (docs/prediction.md).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import struct
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.service import Service, bound_port, cancel, serve_until_signal

log = logging.getLogger(__name__)

SAMPLE_RATE: Final = 5120.0  # Hz
WAVEFORM_SAMPLES: Final = 1024
WAVEFORM_ADDRESS: Final = 100
G_PER_COUNT: Final = 0.001
RPM: Final = 1480.0
#: A 6309-like deep-groove bearing: 8 balls of 17.5 mm on a 72.5 mm pitch circle.
BEARING: Final = {"balls": 8, "ball_diameter": 17.5, "pitch_diameter": 72.5, "contact_angle": 0.0}
RESONANCE_HZ: Final = 1800.0
DAY: Final = 86400.0
WearLaw = Literal["quadratic", "exponential"]
WEAR_LAWS: Final = ("quadratic", "exponential")
#: The exponential law's growth over the fault's life: e-foldings between onset and end of life.
EXP_WEAR_RATE: Final = 2.0

REG_STATE, REG_RPM, REG_TEMP, REG_PARTS, REG_POWER, REG_ENERGY = 0, 1, 2, 3, 4, 6
REG_ALARM, REG_LOAD, REG_AGE = 8, 9, 10


def bpfo_hz(rpm: float) -> float:
    """Ball-pass frequency of the outer race (Hz) at ``rpm``."""
    r = BEARING["ball_diameter"] / BEARING["pitch_diameter"]
    return BEARING["balls"] / 2 * (1 - r) * rpm / 60.0


class PumpModel:
    """The physics, on simulated time, without any network: tests drive it directly."""

    def __init__(
        self,
        onset: float = 10 * DAY,
        life: float = 30 * DAY,
        seed: int = 0,
        cycle_hours: tuple[float, float] = (20.0, 4.0),
        wear_law: WearLaw = "quadratic",
    ) -> None:
        if not 0 <= onset < life:
            raise ValueError("onset must come before life")
        if wear_law not in WEAR_LAWS:
            raise ValueError(f"wear_law must be one of {', '.join(WEAR_LAWS)}")
        self.onset = onset
        self.life = life
        self.wear_law = wear_law
        self.rng = np.random.default_rng(seed)
        self.run_hours, self.stop_hours = cycle_hours
        self.t = 0.0  # simulated seconds since the bearing was new
        self.temperature = 25.0
        self.parts = 0.0  # cycles delivered, unbounded (the register shows it modulo 65536)
        self.energy_kwh = 0.0

    # -- what the machine does at time t ----------------------------------------------------------

    @property
    def wear(self) -> float:
        """0 while healthy, growing to 1 at end of life (and beyond, if nobody intervenes):
        quadratic in the time since onset, or exponential (a spall that grows the faster the
        larger it is, the usual model of bearing degradation), both accelerating."""
        if self.t <= self.onset:
            return 0.0
        x = (self.t - self.onset) / (self.life - self.onset)
        if self.wear_law == "exponential":
            return math.expm1(EXP_WEAR_RATE * x) / math.expm1(EXP_WEAR_RATE)
        return x**2

    @property
    def running(self) -> bool:
        period = (self.run_hours + self.stop_hours) * 3600.0
        return (self.t % period) < self.run_hours * 3600.0

    @property
    def tripped(self) -> bool:
        """The protection trips past end of life (a seized bearing)."""
        return self.t >= self.life * 1.1

    @property
    def rpm(self) -> float:
        return RPM if self.running and not self.tripped else 0.0

    @property
    def load(self) -> float:
        """Fraction of rated load: a daily demand curve between 0.6 and 0.9 while running."""
        if self.rpm == 0:
            return 0.0
        return 0.75 + 0.15 * math.sin(2 * math.pi * self.t / DAY)

    @property
    def power_kw(self) -> float:
        return 0.5 + 18.0 * self.load * (1 + 0.05 * min(self.wear, 2.0)) if self.rpm else 0.0

    def step(self, dt: float) -> None:
        """Advance ``dt`` simulated seconds."""
        if dt <= 0:
            return
        power0 = self.power_kw
        self.t += dt
        target = 25.0 + 30.0 * self.load + 15.0 * min(self.wear, 2.0) * (self.rpm > 0)
        tau = 3600.0  # thermal time constant of the bearing housing
        self.temperature = target + (self.temperature - target) * math.exp(-dt / tau)
        self.parts += (self.rpm > 0) * 30.0 / 60.0 * dt * self.load / 0.75
        self.energy_kwh += (power0 + self.power_kw) / 2 * dt / 3600.0

    def waveform(self) -> npt.NDArray[np.float64]:
        """One acceleration waveform (g), as the accelerometer sees it now."""
        n, fs = WAVEFORM_SAMPLES, SAMPLE_RATE
        t = np.arange(n) / fs
        noise = 0.03 * self.rng.standard_normal(n)
        rpm = self.rpm
        if rpm == 0:
            return noise
        fr = rpm / 60.0
        phase = self.rng.uniform(0, 2 * math.pi)
        wear = min(self.wear, 2.0)
        one_x = (0.045 + 0.12 * wear) * np.sin(2 * math.pi * fr * t + phase)
        two_x = (0.012 + 0.05 * wear) * np.sin(4 * math.pi * fr * t + 2 * phase)
        x = noise + one_x + two_x
        if wear > 0:
            period = 1.0 / bpfo_hz(rpm)
            start = self.rng.uniform(0, period)
            amplitude = 1.5 * wear
            for t0 in np.arange(start, t[-1], period):
                tau = t[t >= t0] - t0
                jitter = 1 + 0.1 * self.rng.standard_normal()
                x[t >= t0] += (
                    amplitude
                    * jitter
                    * np.exp(-tau * 500.0)
                    * np.sin(2 * math.pi * RESONANCE_HZ * tau)
                )
        return x

    def registers(self) -> dict[int, list[int]]:
        """Every register block as the device would answer it now."""
        state = 2 if self.tripped else (1 if self.running else 0)
        power = struct.unpack(">2H", struct.pack(">f", self.power_kw))
        energy = int(self.energy_kwh * 100) & 0xFFFFFFFF
        age = struct.unpack(">2H", struct.pack(">f", self.t / DAY))
        temp = round(self.temperature * 10) & 0xFFFF
        counts = np.clip(np.round(self.waveform() / G_PER_COUNT), -32768, 32767).astype(np.int64)
        return {
            REG_STATE: [
                state,
                round(self.rpm),
                temp,
                int(self.parts) % 65536,
                *power,
                energy >> 16,
                energy & 0xFFFF,
                7 if self.tripped else 0,
                round(self.load * 100),
                *age,
            ],
            WAVEFORM_ADDRESS: [int(c) & 0xFFFF for c in counts],
        }


class DegradingPump(Service):
    """The model behind a Modbus TCP server, advancing ``time_scale`` simulated seconds per real
    second and refreshing the registers every ``update_interval`` real seconds."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        time_scale: float = 1.0,
        update_interval: float = 0.2,
        model: PumpModel | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.time_scale = time_scale
        self.update_interval = update_interval
        self.model = model or PumpModel()
        self.image = [0] * (WAVEFORM_ADDRESS + WAVEFORM_SAMPLES)  # holding = input registers
        self._server: ModbusTcpServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Write the model's present values into the registers."""
        for address, values in self.model.registers().items():
            self.image[address : address + len(values)] = values

    def advance(self, sim_seconds: float) -> None:
        """Jump simulated time ahead (tests: straight to the faulty period)."""
        self.model.step(sim_seconds)
        self.refresh()

    async def start(self) -> None:
        words = len(self.image)
        device = SimDevice(
            id=1,
            simdata=(
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
                [SimData(0, count=words, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=words, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._access,
        )
        server = ModbusTcpServer([device], address=(self.host, self.port))
        await server.serve_forever(background=True)
        self._server = server
        if self.port == 0:
            self.port = bound_port(server)
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        await cancel(ticker)
        if self._server is not None:
            shutdown: Any = self._server.shutdown
            await shutdown()
            self._server = None

    async def _access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus asks before answering: copy the image into its block (read-only device)."""
        if function_code not in (3, 4) or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        offset = address - start_address
        registers[offset : offset + count] = self.image[address : address + count]
        return None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.update_interval)
            now = loop.time()
            self.advance((now - last) * self.time_scale)
            last = now


def _duration(text: str) -> float:
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


async def _serve(args: argparse.Namespace) -> None:
    model = PumpModel(onset=args.onset, life=args.life, seed=args.seed, wear_law=args.wear_law)
    pump = DegradingPump(args.host, args.port, args.time_scale, model=model)
    await serve_until_signal(
        pump,
        lambda: print(
            f"degrading pump on {args.host}:{pump.port}, time x{args.time_scale:g}, fault onset "
            f"day {args.onset / DAY:g}, end of life day {args.life / DAY:g}",
            flush=True,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5021)
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="simulated seconds per real second"
    )
    parser.add_argument("--onset", type=_duration, default=10 * DAY, help="fault onset (10d)")
    parser.add_argument("--life", type=_duration, default=30 * DAY, help="end of life (30d)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--wear-law", choices=WEAR_LAWS, default="quadratic", help="how the fault grows"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
