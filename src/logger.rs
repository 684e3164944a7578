//! The `log` backend: one line per record on stderr, nothing else. Under systemd (stderr is the
//! journal stream named by `JOURNAL_STREAM`) each line starts with the syslog priority `<N>` so
//! journald files it at the right level and adds its own timestamp; elsewhere each line starts
//! with a UTC timestamp and the level.
//!
//! It must never block on anything but the stderr write, never allocate per line beyond one
//! `String`, and never panic (a failed write is dropped: there is nowhere left to report it).
//! Invariant: every physical output line carries the prefix, including the continuation lines
//! of a multi-line message, because journald assigns the priority per line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

static LOGGER: StderrLogger = StderrLogger;
static JOURNAL: AtomicBool = AtomicBool::new(false);

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let journal = JOURNAL.load(Ordering::Relaxed);
        let line = format_record(
            journal,
            SystemTime::now(),
            record.level(),
            record.target(),
            &record.args().to_string(),
        );
        // One write_all per record keeps lines from interleaving with other writers of stderr.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (a second call only changes the level, so tests and re-inits are safe).
pub fn init(level: LevelFilter) {
    JOURNAL.store(stderr_is_journal(), Ordering::Relaxed);
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Changes the verbosity at runtime (SIGHUP re-reads `LOG_LEVEL`).
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// systemd sets `JOURNAL_STREAM=<dev>:<ino>` for the stderr it connects to the journal. A child
/// that inherited the variable but had stderr redirected must not write `<6>` into a file, so
/// the pair is compared with stderr when it can be read; if it cannot, the variable is trusted.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return true;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return true;
    };
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(meta) => meta.dev() == dev && meta.ino() == ino,
        Err(_) => true,
    }
}

fn priority(level: Level) -> &'static str {
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

fn format_record(
    journal: bool,
    now: SystemTime,
    level: Level,
    target: &str,
    message: &str,
) -> String {
    let prefix = if journal {
        priority(level).to_string()
    } else {
        format!("{} ", utc_timestamp(now))
    };
    // The crate name adds nothing to a line that only this program writes.
    let target = target.strip_prefix("push_server::").unwrap_or(target);
    let mut out = String::with_capacity(prefix.len() + target.len() + message.len() + 16);
    for (i, text) in message.split('\n').enumerate() {
        out.push_str(&prefix);
        if i == 0 {
            out.push_str(&format!("{:<5} {target}: ", level.as_str()));
        } else {
            out.push_str("  ");
        }
        out.push_str(text);
        out.push('\n');
    }
    out
}

/// `2026-11-25T12:00:00.123Z`; clocks before 1970 print as the epoch.
fn utc_timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Howard Hinnant's days-to-civil: proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            utc_timestamp(at(1_795_608_000, 123)),
            "2026-11-25T12:00:00.123Z"
        );
        // Leap day and end of year.
        assert_eq!(
            utc_timestamp(at(951_825_599, 999)),
            "2000-02-29T11:59:59.999Z"
        );
        assert_eq!(
            utc_timestamp(at(1_735_689_599, 0)),
            "2024-12-31T23:59:59.000Z"
        );
    }

    #[test]
    fn plain_line() {
        let line = format_record(
            false,
            at(1_795_608_000, 123),
            Level::Info,
            "push_server::server",
            "listening",
        );
        assert_eq!(line, "2026-11-25T12:00:00.123Z INFO  server: listening\n");
    }

    #[test]
    fn journal_lines_carry_priority_on_every_line() {
        let now = at(0, 0);
        assert_eq!(
            format_record(true, now, Level::Error, "x", "boom"),
            "<3>ERROR x: boom\n"
        );
        assert_eq!(
            format_record(true, now, Level::Warn, "x", "w"),
            "<4>WARN  x: w\n"
        );
        assert_eq!(
            format_record(true, now, Level::Trace, "x", "t"),
            "<7>TRACE x: t\n"
        );
        assert_eq!(
            format_record(true, now, Level::Info, "x", "a\nb"),
            "<6>INFO  x: a\n<6>  b\n"
        );
    }

    #[test]
    fn init_twice_is_harmless() {
        init(LevelFilter::Warn);
        init(LevelFilter::Info);
        assert_eq!(log::max_level(), LevelFilter::Info);
        set_level(LevelFilter::Debug);
        assert_eq!(log::max_level(), LevelFilter::Debug);
    }
}
