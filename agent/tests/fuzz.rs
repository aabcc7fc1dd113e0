//! Property tests ("fuzzing" on stable Rust) of everything the agent parses from outside:
//! label selectors, histogram buckets, `KUBENURSE_EXTRA_CHECKS`, the whole environment, and
//! the target lists an aggregator pushes. No input panics; every refusal names a declared
//! variable; a pushed list is taken only when every entry is usable. `PROPTEST_CASES` sets the
//! count.

use std::collections::HashMap;

use kubenurse_agent::config::vars::{parse_buckets, parse_extra_checks, ALL};
use kubenurse_agent::config::Config;
use kubenurse_agent::pushed::PushedList;
use kubenurse_neighbours::selector::LabelSelector;
use kubenurse_proto::v1::{Target, Targets};
use proptest::prelude::*;

/// Values that are valid for some variables and garbage for others, plus arbitrary text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "true",
            "false",
            "yes",
            "0",
            "10",
            "-1",
            "5s",
            "0s",
            "1m30s",
            "garbage",
            "8080",
            "70000",
            "127.0.0.1",
            "::1",
            "http://127.0.0.1:9",
            "https://x.example",
            "ftp://x",
            "app=kubenurse",
            "app in (a,b)",
            "a:http://x|b:https://y",
            ".005,.01,1",
            "1,0.5",
            "/nonexistent/file",
        ])
        .prop_map(String::from),
        "[ -~]{0,30}",
    ]
}

proptest! {
    #[test]
    fn selectors_parse_or_refuse_and_round_trip(text in "[a-z0-9=!,() ./_-]{0,60}") {
        if let Ok(sel) = LabelSelector::parse(&text) {
            prop_assert_eq!(LabelSelector::parse(&sel.to_string()), Ok(sel.clone()), "{}", text);
        }
    }

    #[test]
    fn any_selector_text_is_parsed_or_refused(text in "\\PC{0,80}") {
        let _ = LabelSelector::parse(&text);
    }

    #[test]
    fn buckets_parse_to_increasing_positive_bounds(text in "[0-9.,eE+ -]{0,40}") {
        if let Ok(b) = parse_buckets(&text) {
            prop_assert!(!b.is_empty());
            prop_assert!(b.iter().all(|v| v.is_finite() && *v > 0.0));
            prop_assert!(b.windows(2).all(|w| w[0] < w[1]));
        }
    }

    #[test]
    fn extra_checks_parse_or_refuse(text in "[a-z_:/|.0-9 -]{0,60}") {
        if let Ok(checks) = parse_extra_checks(&text) {
            let names: std::collections::BTreeSet<&str> = checks.iter().map(|c| c.name.as_str()).collect();
            prop_assert_eq!(names.len(), checks.len(), "names are unique");
        }
    }

    #[test]
    fn any_environment_is_accepted_or_names_a_declared_variable(
        picks in prop::collection::vec((0usize..ALL.len(), value()), 0..12),
    ) {
        let mut env: HashMap<&str, String> = HashMap::from([("KUBENURSE_POD_NAME", "fuzz".to_string())]);
        for (i, v) in picks {
            env.insert(ALL[i].name, v);
        }
        match Config::from_lookup(&|k| env.get(k).cloned()) {
            Ok(_) => {}
            Err(e) => prop_assert!(ALL.iter().any(|v| v.name == e.variable), "{e}"),
        }
    }

    #[test]
    fn pushed_targets_are_taken_whole_or_refused(
        targets in prop::collection::vec(
            ("\\PC{0,20}|node-[a-z0-9]{1,8}", "\\PC{0,20}|kubenurse-[a-z0-9]{1,8}", "\\PC{0,16}|127\\.0\\.0\\.[0-9]{1,3}|::1", "\\PC{0,80}"),
            0..40,
        ),
        checked_by in prop::collection::vec("\\PC{0,20}|kubenurse-[a-z0-9]{1,8}", 0..20),
        state in "\\PC{0,2000}",
        limit in 0usize..20,
    ) {
        let message = Targets {
            targets: targets
                .iter()
                .map(|(node, pod, ip, host)| Target {
                    node: node.clone(),
                    pod: pod.clone(),
                    pod_ip: ip.clone(),
                    host_ip: host.clone(),
                    zone: String::new(),
                })
                .collect(),
            checked_by,
            own: None,
            neighbourhood_state: state,
        };
        if let Ok(list) = PushedList::from_wire(message.clone(), limit) {
            prop_assert!(limit == 0 || list.neighbours.len() <= limit);
            prop_assert!(list.state.chars().count() <= 512);
            for n in &list.neighbours {
                prop_assert!(n.pod_ip.parse::<std::net::IpAddr>().is_ok(), "{:?}", n.pod_ip);
                prop_assert!(message.targets.iter().any(|t| t.node == n.node_name && t.pod == n.pod_name));
                prop_assert!(n.host_ip.chars().count() <= 64);
            }
        }
    }
}
