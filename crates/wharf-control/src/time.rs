//! RFC 3339 timestamps, the form Google APIs use for `createTime` and friends.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` as `2026-11-22T17:45:39.123456Z` (UTC, microseconds); instants before 1970 or
/// past jiff's range print as the Unix epoch.
pub fn rfc3339(time: SystemTime) -> String {
    let timestamp = jiff::Timestamp::try_from(time).ok().filter(|_| time >= UNIX_EPOCH);
    format!("{:.6}", timestamp.unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

pub fn now() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_369_539)), "2026-11-22T17:45:39.000000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
    }
}
