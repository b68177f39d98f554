//! Printing shared by the benchmarks: goal verdicts and failures grouped by message.

/// Distinct failure messages at most, per variant: they often name a container or a
/// veth, so a burst failing throughout would otherwise print one line per call.
pub const SHOWN_FAILURES: usize = 5;

/// A goal's verdict as the benchmarks print it.
pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// `who`'s failures: each distinct message with its count, the first few only.
pub fn print_failures(who: &str, lines: &[String]) {
    let distinct = grouped(lines);
    for (line, count) in distinct.iter().take(SHOWN_FAILURES) {
        println!("  {who}: {count} failed: {line}");
    }
    if distinct.len() > SHOWN_FAILURES {
        println!(
            "  {who}: ... and {} more distinct message(s)",
            distinct.len() - SHOWN_FAILURES
        );
    }
}

/// Distinct messages with their counts, in order of first appearance.
pub fn grouped(lines: &[String]) -> Vec<(&str, usize)> {
    let mut out: Vec<(&str, usize)> = Vec::new();
    for l in lines {
        match out.iter_mut().find(|(m, _)| *m == l.as_str()) {
            Some((_, n)) => *n += 1,
            None => out.push((l.as_str(), 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_in_order_of_first_appearance() {
        let lines: Vec<String> = ["b", "a", "b", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(grouped(&lines), vec![("b", 3), ("a", 1)]);
        assert_eq!(met(true), "met");
        assert_eq!(met(false), "NOT MET");
    }
}
