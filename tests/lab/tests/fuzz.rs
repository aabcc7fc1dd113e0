//! Property tests of the lab's fault-spec parser (it reads flags, stdin and an HTTP endpoint):
//! no input panics; a spec that parses names a known fault.

use kubenurse_lab::lab::FaultSpec;
use proptest::prelude::*;

proptest! {
    #[test]
    fn any_text_is_parsed_or_refused(text in "\\PC{0,60}") {
        let _ = text.parse::<FaultSpec>();
    }

    #[test]
    fn fault_alphabet_is_parsed_or_refused(
        kind in prop::sample::select(vec!["delay", "refuse", "drop", "cordon", "uncordon", "delete", "partition", "apiserver", "heal", "x"]),
        rest in "[a-z0-9:.%+-]{0,20}",
    ) {
        let spec = format!("{kind}:{rest}");
        if let Err(e) = spec.parse::<FaultSpec>() {
            prop_assert!(!e.is_empty(), "a refusal says why: {}", spec);
        }
    }
}
