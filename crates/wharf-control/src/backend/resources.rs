//! Resource limits as users write them: memory in Kubernetes quantity syntax (`512Mi`, `2Gi`,
//! `1G`, `256M`, plain bytes) and CPU as cores (`1`, `0.5`) or millicores (`500m`).

use std::fmt;

/// An instance's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub memory_bytes: u64,
    /// CPU in thousandths of a core; enforced as a CFS quota over a 100 ms period.
    pub cpu_millis: u64,
    pub pids: u64,
}

pub const MIB: u64 = 1 << 20;
/// Cloud Run's smallest and largest memory limits.
pub const MIN_MEMORY: u64 = 128 * MIB;
pub const MAX_MEMORY: u64 = 32 * 1024 * MIB;
/// Cloud Run's smallest and largest CPU limits: 0.08 and 8 CPUs.
pub const MIN_CPU_MILLIS: u64 = 80;
pub const MAX_CPU_MILLIS: u64 = 8000;

impl Default for Resources {
    /// Cloud Run's defaults: 512 MiB, 1 CPU; and a pids bound against fork bombs.
    fn default() -> Resources {
        Resources { memory_bytes: 512 * MIB, cpu_millis: 1000, pids: 1024 }
    }
}

/// Why a quantity was refused; the message says the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuantityError(pub String);

/// Parses a memory quantity into bytes.
pub fn parse_memory(input: &str) -> Result<u64, QuantityError> {
    let bad = || {
        QuantityError(format!(
            "invalid memory {input:?}: use a number with a unit such as 512Mi, 1Gi or 256M (Ki, Mi, Gi, k, M, G)"
        ))
    };
    let s = input.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let multiplier: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(bad());
    }
    let bytes = value * multiplier as f64;
    if bytes > u64::MAX as f64 {
        return Err(bad());
    }
    #[allow(clippy::cast_possible_truncation)] // bounded just above
    Ok(bytes.round() as u64)
}

/// Parses a CPU quantity into millicores.
pub fn parse_cpu(input: &str) -> Result<u64, QuantityError> {
    let bad =
        || QuantityError(format!("invalid cpu {input:?}: use cores such as 1, 2 or 0.5, or millicores such as 500m"));
    let s = input.trim();
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let cores: f64 = s.parse().map_err(|_| bad())?;
        if !cores.is_finite() || !(0.0..=1_000.0).contains(&cores) {
            return Err(bad());
        }
        #[allow(clippy::cast_possible_truncation)] // bounded just above
        let millis = (cores * 1000.0).round() as u64;
        millis
    };
    if millis == 0 {
        return Err(bad());
    }
    Ok(millis)
}

/// Formats bytes the way error messages and status show them ("512 MiB", "2 GiB").
#[derive(Debug, Clone, Copy)]
pub struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", b >> 30)
        } else if b >= MIB {
            write!(f, "{} MiB", b / MIB)
        } else {
            write!(f, "{b} bytes")
        }
    }
}

impl Resources {
    /// Builds limits from user strings, checking Cloud Run's ranges.
    pub fn from_user(memory: Option<&str>, cpu: Option<&str>) -> Result<Resources, QuantityError> {
        let mut r = Resources::default();
        if let Some(m) = memory {
            r.memory_bytes = parse_memory(m)?;
        }
        if let Some(c) = cpu {
            r.cpu_millis = parse_cpu(c)?;
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&r.memory_bytes) {
            return Err(QuantityError(format!(
                "memory {} is out of range: it must be between 128Mi and 32Gi",
                HumanBytes(r.memory_bytes)
            )));
        }
        if !(MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&r.cpu_millis) {
            return Err(QuantityError(format!(
                "cpu {}m is out of range: it must be between 0.08 (80m) and 8 CPUs",
                r.cpu_millis
            )));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory("512Mi"), Ok(512 * MIB));
        assert_eq!(parse_memory("2Gi"), Ok(2 << 30));
        assert_eq!(parse_memory("256M"), Ok(256_000_000));
        assert_eq!(parse_memory("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_memory("1048576"), Ok(MIB));
        for bad in ["", "Mi", "-1Mi", "12Xi", "0", "abc"] {
            parse_memory(bad).expect_err(bad);
        }
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu("1"), Ok(1000));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        for bad in ["", "0", "m", "-1", "1.5x", "NaN"] {
            parse_cpu(bad).expect_err(bad);
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(Resources::from_user(None, None), Ok(Resources::default()));
        let e = Resources::from_user(Some("64Mi"), None).unwrap_err();
        assert!(e.0.contains("between 128Mi and 32Gi"), "{e}");
        Resources::from_user(None, Some("16")).unwrap_err();
        assert_eq!(HumanBytes(512 * MIB).to_string(), "512 MiB");
        assert_eq!(HumanBytes(2 << 30).to_string(), "2 GiB");
    }
}
