//! The cap on the logs the server keeps for one prediction, or for the
//! model's setup: a model that never stops printing must not exhaust the
//! server's memory. Past the cap the logs end with a marker.

use std::borrow::Cow;

/// The most log text one prediction (or the setup) keeps.
pub const MAX_LOG_BYTES: usize = 16 * 1024 * 1024;
/// Ends logs that reached [`MAX_LOG_BYTES`].
pub const LOGS_TRUNCATED: &str = "\n[cogd: logs truncated: more than 16 MiB was written]\n";

/// Appends `data` to `logs` unless that would pass [`MAX_LOG_BYTES`]: then
/// as much as fits (whole characters), and [`LOGS_TRUNCATED`], after which
/// nothing more is added. Returns what was added, `None` when nothing was.
/// Logs that were cut are the only ones longer than the cap (the marker puts
/// them past it), so output that merely contains the marker's text stops
/// nothing.
pub fn append_capped<'a>(logs: &mut String, data: &'a str) -> Option<Cow<'a, str>> {
    if logs.len() > MAX_LOG_BYTES || data.is_empty() {
        return None;
    }
    if logs.len() + data.len() <= MAX_LOG_BYTES {
        logs.push_str(data);
        return Some(Cow::Borrowed(data));
    }
    let mut keep = MAX_LOG_BYTES - logs.len();
    while !data.is_char_boundary(keep) {
        keep -= 1;
    }
    let added = format!("{}{LOGS_TRUNCATED}", &data[..keep]);
    logs.push_str(&added);
    Some(Cow::Owned(added))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cut_is_reported_as_what_was_added() {
        let mut logs = "x".repeat(MAX_LOG_BYTES - 2);
        let added = append_capped(&mut logs, "abcd").unwrap();
        assert_eq!(added, format!("ab{LOGS_TRUNCATED}"));
        assert_eq!(logs.len(), MAX_LOG_BYTES + LOGS_TRUNCATED.len());
        assert_eq!(append_capped(&mut logs, "e"), None);
    }
}
