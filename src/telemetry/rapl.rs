//! RAPL through the Linux powercap interface: CPU package and DRAM energy.
//!
//! Zones are the `intel-rapl:*` entries of `/sys/class/powercap` (AMD CPUs use the same driver
//! names). A zone named `package-N` becomes device `cpu-packageN`; a zone named `dram` under package
//! P becomes `cpu-dramP` (DRAM is a separate domain, not part of the package's count; the `core`,
//! `uncore` and `psys` zones are skipped: the first two are parts of the package, the last overlaps
//! everything). Each zone gives two channels: `energy` (the `energy_uj` counter, unwrapped with
//! `max_energy_range_uj`, in J since the source opened) and `power` (W, the counter's increase over
//! at least 5 ms divided by the time).
//!
//! `energy_uj` is readable by root only since Linux 5.10 (CVE-2020-8694): an unreadable zone is
//! reported as unavailable with that reason; nothing fails.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::source::{ChannelSpec, CounterEvents, EnergyCounter, PolledFile, Quantity, Source};
use super::SourceStatus;

/// Where powercap lives on Linux.
pub const POWERCAP_ROOT: &str = "/sys/class/powercap";

/// Shortest interval a RAPL power value is computed over.
const MIN_POWER_DT_S: f64 = 0.005;

/// A RAPL zone found under the powercap root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaplZoneInfo {
    /// `cpu-package0`, `cpu-dram0`.
    pub device: String,
    /// The zone directory.
    pub path: String,
    /// Its `name` file (`package-0`, `dram`).
    pub name: String,
    pub max_energy_range_uj: Option<u64>,
    pub readable: bool,
    /// Why it cannot be read.
    pub reason: Option<String>,
}

struct Zone {
    device: String,
    energy_file: PolledFile,
    counter: EnergyCounter,
    /// (time, joules) at the last power computation.
    power_ref: Option<(f64, f64)>,
    power: Option<f64>,
}

/// The readable RAPL zones as a telemetry [`Source`].
pub struct RaplSource {
    zones: Vec<Zone>,
}

/// What probing powercap found.
pub struct RaplOpen {
    pub source: Option<RaplSource>,
    pub zones: Vec<RaplZoneInfo>,
    pub status: SourceStatus,
}

fn read_u64(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (energy_uj is readable by root only since Linux 5.10; run as root or grant read access)"
        } else {
            ""
        };
        format!("cannot read {}: {e}{hint}", path.display())
    })?;
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("{}: `{}` is not a number", path.display(), text.trim()))
}

/// Find and probe the RAPL zones under `root` (normally [`POWERCAP_ROOT`]).
pub fn open(root: &Path) -> RaplOpen {
    let unavailable = |reason: String| RaplOpen {
        source: None,
        zones: Vec::new(),
        status: SourceStatus::unavailable("rapl", reason),
    };
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) => {
            return unavailable(format!(
                "no RAPL: cannot list {}: {e} (not Linux, a VM or container without powercap, or the intel_rapl driver is not loaded)",
                root.display()
            ))
        }
    };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("intel-rapl:")
                .map(|id| (id.to_string(), e.path()))
        })
        .collect();
    dirs.sort();
    let mut infos = Vec::new();
    let mut zones = Vec::new();
    for (id, dir) in dirs {
        let name = std::fs::read_to_string(dir.join("name"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let parts: Vec<&str> = id.split(':').collect();
        let device = match (parts.as_slice(), name.as_str()) {
            ([_], n) if n.starts_with("package-") => {
                format!("cpu-package{}", &n["package-".len()..])
            }
            ([p, _], "dram") => format!("cpu-dram{p}"),
            _ => continue,
        };
        let max = read_u64(&dir.join("max_energy_range_uj")).ok();
        let energy_path = dir.join("energy_uj");
        let mut info = RaplZoneInfo {
            device: device.clone(),
            path: dir.display().to_string(),
            name,
            max_energy_range_uj: max,
            readable: false,
            reason: None,
        };
        let opened = read_u64(&energy_path).and_then(|raw| {
            PolledFile::open(&energy_path)
                .map(|f| (raw, f))
                .map_err(|e| e.to_string())
        });
        match opened {
            Ok((raw, energy_file)) => {
                info.readable = true;
                let mut counter = EnergyCounter::new(1e-6, max);
                counter.update(raw);
                zones.push(Zone {
                    device,
                    energy_file,
                    counter,
                    power_ref: None,
                    power: None,
                });
            }
            Err(why) => info.reason = Some(why),
        }
        infos.push(info);
    }
    if infos.is_empty() {
        return unavailable(format!(
            "no RAPL: {} has no package or dram zone",
            root.display()
        ));
    }
    if zones.is_empty() {
        let why = infos
            .iter()
            .filter_map(|z| z.reason.clone())
            .next()
            .unwrap_or_default();
        let mut r = unavailable(format!("RAPL zones found but none readable: {why}"));
        r.zones = infos;
        return r;
    }
    let mut status = SourceStatus::available("rapl", zones.iter().map(|z| z.device.clone()));
    status.unsupported = infos
        .iter()
        .filter_map(|z| z.reason.as_ref().map(|r| format!("{}: {r}", z.device)))
        .collect();
    RaplOpen {
        source: Some(RaplSource { zones }),
        zones: infos,
        status,
    }
}

impl Source for RaplSource {
    fn kind(&self) -> &str {
        "rapl"
    }

    fn channels(&self) -> Vec<ChannelSpec> {
        self.zones
            .iter()
            .flat_map(|z| {
                [
                    ChannelSpec::counter(&z.device, Quantity::Energy),
                    ChannelSpec::gauge(&z.device, Quantity::Power),
                ]
            })
            .collect()
    }

    fn read(&mut self, t_s: f64, out: &mut [Option<f64>]) {
        for (z, slots) in self.zones.iter_mut().zip(out.chunks_mut(2)) {
            let Ok(raw) = z.energy_file.read_u64() else {
                continue;
            };
            let j = z.counter.update(raw);
            match z.power_ref {
                Some((t0, j0)) if t_s - t0 >= MIN_POWER_DT_S => {
                    z.power = Some((j - j0) / (t_s - t0));
                    z.power_ref = Some((t_s, j));
                }
                None => z.power_ref = Some((t_s, j)),
                _ => {}
            }
            slots[0] = Some(j);
            if let Some(p) = slots.get_mut(1) {
                *p = z.power;
            }
        }
    }

    fn counter_events(&self) -> Vec<CounterEvents> {
        self.zones
            .iter()
            .map(|z| CounterEvents {
                device: z.device.clone(),
                wraps: z.counter.wraps,
                resets: z.counter.resets,
            })
            .collect()
    }
}

/// Write a fake powercap tree (one package with a DRAM zone and a core zone) under `root`, with
/// the given counters; used by tests and by `info --measure-sampler` on machines without RAPL.
pub fn write_fake_powercap(
    root: &Path,
    package_uj: u64,
    dram_uj: u64,
    max_uj: u64,
) -> std::io::Result<()> {
    for (dir, name, uj) in [
        ("intel-rapl:0", "package-0", package_uj),
        ("intel-rapl:0:0", "core", package_uj / 2),
        ("intel-rapl:0:1", "dram", dram_uj),
    ] {
        let d = root.join(dir);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("name"), format!("{name}\n"))?;
        std::fs::write(d.join("energy_uj"), format!("{uj}\n"))?;
        std::fs::write(d.join("max_energy_range_uj"), format!("{max_uj}\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_powercap_tree_is_unavailable_with_the_reason() {
        let r = open(Path::new("/nonexistent/powercap"));
        assert!(r.source.is_none());
        assert!(!r.status.available);
        assert!(r.status.reason.unwrap().contains("/nonexistent/powercap"));
    }

    #[test]
    fn package_and_dram_are_read_and_the_counter_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let max = 1_000_000_000u64; // 1000 J range
        write_fake_powercap(dir.path(), max - 2_000_000, 10_000_000, max).unwrap();
        let r = open(dir.path());
        assert!(r.status.available, "{:?}", r.status);
        assert_eq!(r.status.devices, vec!["cpu-package0", "cpu-dram0"]);
        let mut s = r.source.unwrap();
        let names: Vec<String> = s.channels().iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            vec![
                "cpu-package0.energy",
                "cpu-package0.power",
                "cpu-dram0.energy",
                "cpu-dram0.power"
            ]
        );
        let mut v = vec![None; 4];
        s.read(0.0, &mut v);
        assert_eq!(v[0], Some(0.0));
        // package wraps: 2 J before the wrap + 3 J after; DRAM +1 J; 0.1 s later
        std::fs::write(dir.path().join("intel-rapl:0/energy_uj"), "3000000\n").unwrap();
        std::fs::write(dir.path().join("intel-rapl:0:1/energy_uj"), "11000000\n").unwrap();
        let mut v = vec![None; 4];
        s.read(0.1, &mut v);
        assert!((v[0].unwrap() - 5.0).abs() < 1e-9, "{v:?}");
        assert!((v[1].unwrap() - 50.0).abs() < 1e-6, "{v:?}");
        assert!((v[2].unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(s.counter_events()[0].wraps, 1);
    }

    #[test]
    fn unreadable_zones_give_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        write_fake_powercap(dir.path(), 1, 1, 10).unwrap();
        for z in ["intel-rapl:0", "intel-rapl:0:1"] {
            std::fs::remove_file(dir.path().join(z).join("energy_uj")).unwrap();
        }
        let r = open(dir.path());
        assert!(!r.status.available);
        let why = r.status.reason.unwrap();
        assert!(
            why.contains("none readable") && why.contains("energy_uj"),
            "{why}"
        );
        assert_eq!(r.zones.len(), 2);
    }
}
