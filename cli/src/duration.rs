//! Durations on the command line: `90`, `90s`, `15m`, `1h`, `2d`.

/// Parses a duration into whole seconds.
pub(crate) fn parse_seconds(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 90, 90s, 15m, 1h, 2d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use s, m, h or d")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A compact human form: `1h`, `59m30s`, `2d`.
pub(crate) fn human(mut secs: i64) -> String {
    if secs < 0 {
        return format!("-{}", human(-secs));
    }
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_durations() {
        assert_eq!(parse_seconds("90"), Ok(90));
        assert_eq!(parse_seconds("15m"), Ok(900));
        assert_eq!(parse_seconds("1h"), Ok(3600));
        assert_eq!(parse_seconds("2d"), Ok(172800));
        assert!(parse_seconds("1w").is_err());
        assert!(parse_seconds("h").is_err());
        assert_eq!(human(3690), "1h1m30s");
        assert_eq!(human(0), "0s");
    }
}
