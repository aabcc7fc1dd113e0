//! Property tests ("fuzzing" on stable Rust) of the Go duration parser: no input panics, and
//! every well-formed duration means what Go means. `PROPTEST_CASES` sets the number of cases.

use std::time::Duration;

use kubenurse_common::duration::parse_go_duration;
use proptest::prelude::*;

const UNITS: [(&str, f64); 8] =
    [("ns", 1.0), ("us", 1e3), ("µs", 1e3), ("μs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)];

proptest! {
    #[test]
    fn any_text_is_parsed_or_refused(text in "\\PC{0,40}") {
        let _ = parse_go_duration(&text);
    }

    #[test]
    fn duration_alphabet_is_parsed_or_refused(text in "[-+0-9.a-zµμ ]{0,24}") {
        if let Ok(d) = parse_go_duration(&text) {
            prop_assert!(d <= Duration::from_nanos(9_200_000_000_000_000_000));
        }
    }

    #[test]
    fn well_formed_durations_mean_their_sum(parts in prop::collection::vec((0u32..100_000, 0usize..UNITS.len()), 1..5)) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
        let nanos: f64 = parts.iter().map(|(n, u)| f64::from(*n) * UNITS[*u].1).sum();
        let parsed = parse_go_duration(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(parsed, Duration::from_nanos(nanos.round() as u64), "{}", text);
    }
}
