//! A source with a known power curve, for tests and for measuring the sampler's own cost.
//!
//! Device `name` (e.g. `gpu0`) gets an `energy` counter (the exact integral, fed through an
//! [`EnergyCounter`] in mJ like NVML's), `power_instant` (W, integrated by the timeline) and
//! `memory_used` (bytes), all functions of the sample time.

use super::source::{ChannelSpec, EnergyCounter, Quantity, Source};

type Curve = Box<dyn Fn(f64) -> f64 + Send>;

pub struct SyntheticSource {
    device: String,
    power_w: Curve,
    energy_j: Curve,
    memory_bytes: Curve,
    counter: EnergyCounter,
    with_counter: bool,
}

impl SyntheticSource {
    /// `power_w(t)` and its integral `energy_j(t)` (J since any fixed origin).
    pub fn new(
        device: &str,
        power_w: impl Fn(f64) -> f64 + Send + 'static,
        energy_j: impl Fn(f64) -> f64 + Send + 'static,
    ) -> Self {
        Self {
            device: device.into(),
            power_w: Box::new(power_w),
            energy_j: Box::new(energy_j),
            memory_bytes: Box::new(|_| 1e9),
            counter: EnergyCounter::new(1e-3, None),
            with_counter: true,
        }
    }

    /// A device drawing a constant `watts`.
    pub fn constant(device: &str, watts: f64) -> Self {
        Self::new(device, move |_| watts, move |t| watts * t)
    }

    /// Drop the energy counter (energy then comes from power integration).
    pub fn without_counter(mut self) -> Self {
        self.with_counter = false;
        self
    }

    pub fn with_memory(mut self, memory_bytes: impl Fn(f64) -> f64 + Send + 'static) -> Self {
        self.memory_bytes = Box::new(memory_bytes);
        self
    }
}

impl Source for SyntheticSource {
    fn kind(&self) -> &str {
        "synthetic"
    }

    fn channels(&self) -> Vec<ChannelSpec> {
        let mut p = ChannelSpec::gauge(&self.device, Quantity::PowerInstant);
        p.integrate = true;
        vec![
            ChannelSpec::counter(&self.device, Quantity::Energy),
            p,
            ChannelSpec::gauge(&self.device, Quantity::MemoryUsed),
        ]
    }

    fn read(&mut self, t_s: f64, out: &mut [Option<f64>]) {
        let mj = ((self.energy_j)(t_s) * 1e3).round().max(0.0) as u64;
        let j = self.counter.update(mj);
        let vals = [
            self.with_counter.then_some(j),
            Some((self.power_w)(t_s)),
            Some((self.memory_bytes)(t_s)),
        ];
        for (o, v) in out.iter_mut().zip(vals) {
            *o = v;
        }
    }
}
