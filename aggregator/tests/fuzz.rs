//! Property tests ("fuzzing" on stable Rust) of what the aggregator takes from outside: raw
//! bytes and structured messages from agents through decoding, validation and the state, and
//! its command line. No input panics, and the state stays within its bounds whatever arrives.
//! `PROPTEST_CASES` sets the number of cases.

use std::ffi::OsString;

use kubenurse_aggregator::config::{parse_args, Config};
use kubenurse_aggregator::state::{ClusterState, Settings};
use kubenurse_aggregator::validate::MAX_ERROR_LEN;
use kubenurse_proto::v1::{
    agent_message, check, AgentMessage, Check, CheckResult, Hello, Phase, ResultBatch, RoundEnd, UdpResult,
};
use proptest::prelude::*;
use prost::Message;

const MAX_NODES: usize = 40;
const MAX_TARGETS: usize = 8;
/// Who sends in the structured case.
const SENDERS: [&str; 4] = ["node-a", "node-b", "node-c", "Bad_Name"];

fn state() -> ClusterState {
    ClusterState::new(Settings { max_nodes: MAX_NODES, max_targets: MAX_TARGETS, ..Settings::default() })
}

/// Feeds one decoded message as a stream of `node` would, at `now`.
fn feed(s: &mut ClusterState, node: &str, msg: AgentMessage, now: i64) {
    match msg.msg {
        Some(agent_message::Msg::Hello(h)) => {
            let _ = s.hello(h, now, true);
        }
        Some(agent_message::Msg::Batch(b)) => {
            let _ = s.batch(node, &b, now);
        }
        None => {}
    }
}

fn assert_bounded(s: &ClusterState) -> Result<(), TestCaseError> {
    prop_assert!(s.nodes.len() <= MAX_NODES, "{} nodes", s.nodes.len());
    for (src, row) in &s.matrix {
        prop_assert!(row.len() <= MAX_TARGETS, "{src}: {} cells", row.len());
        for cell in row.values() {
            prop_assert!(cell.last_error.as_ref().is_none_or(|e| e.len() <= MAX_ERROR_LEN));
        }
    }
    for n in s.nodes.values() {
        prop_assert!(n.last_round.as_ref().is_none_or(|r| r.neighbourhood_state.len() <= MAX_ERROR_LEN));
    }
    Ok(())
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["node-a", "node-b", "node-c", "node-d", "Bad_Name", "", "a.b-c"])
            .prop_map(String::from),
        "[a-z0-9.-]{1,12}",
        "\\PC{0,8}",
    ]
}

fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,20}",
        prop::collection::vec(prop::sample::select(vec!['x', 'é', '€', '😀', '\n']), 0..max)
            .prop_map(|v| v.into_iter().collect::<String>())
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    (0u32..4, name(), prop::collection::vec(name(), 0..12), any::<u64>(), 0u32..12, text(80)).prop_map(
        |(protocol, node, targets, interval, limit, zone)| Hello {
            protocol,
            node,
            pod: "kubenurse-x".into(),
            zone,
            interval_micros: if interval % 3 == 0 { 1_000_000 } else { interval },
            neighbour_limit: limit,
            targets,
            ..Hello::default()
        },
    )
}

fn result() -> impl Strategy<Value = CheckResult> {
    (
        prop::option::of((-2i32..9, name())),
        name(),
        name(),
        any::<u64>(),
        any::<u64>(),
        -1i32..5,
        text(700),
        prop::collection::vec(("[a-z_]{0,12}", any::<u64>()), 0..4),
    )
        .prop_map(|(typed, check_type, target_node, round, duration, outcome, error, phases)| CheckResult {
            check: typed.map(|(kind, name)| Check { kind, name }),
            check_type: if check_type.len() % 2 == 0 { format!("path_{target_node}") } else { check_type },
            target_node,
            round: round % 8,
            duration_micros: duration % 2_000_000_000,
            outcome,
            error,
            phases: phases.into_iter().map(|(event, micros)| Phase { event, micros }).collect(),
            ..CheckResult::default()
        })
}

fn udp() -> impl Strategy<Value = UdpResult> {
    (name(), any::<u64>(), 0u32..120, 0u32..120, any::<u32>(), 0u32..20, prop::collection::vec(any::<u64>(), 0..30))
        .prop_map(|(target_node, round, sent, received, duplicated, reordered, rtt_micros)| UdpResult {
            target_node,
            round: round % 8,
            sent,
            received,
            duplicated,
            reordered,
            rtt_micros: rtt_micros.into_iter().map(|r| r % 20_000_000_000).collect(),
            ..UdpResult::default()
        })
}

fn message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        hello().prop_map(|h| AgentMessage { msg: Some(agent_message::Msg::Hello(h)) }),
        (
            prop::collection::vec(result(), 0..20),
            prop::collection::vec((any::<u64>(), any::<bool>(), text(700)), 0..3),
            prop::collection::vec(udp(), 0..6)
        )
            .prop_map(|(results, ends, udp_results)| AgentMessage {
                msg: Some(agent_message::Msg::Batch(ResultBatch {
                    results,
                    round_ends: ends
                        .into_iter()
                        .map(|(round, all_ok, neighbourhood_state)| RoundEnd {
                            round,
                            all_ok,
                            neighbourhood_state,
                            ..RoundEnd::default()
                        })
                        .collect(),
                    udp_results,
                })),
            }),
        Just(AgentMessage { msg: None }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_are_decoded_or_refused_and_never_break_the_state(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..256), 1..8),
    ) {
        let mut s = state();
        for (i, bytes) in frames.iter().enumerate() {
            if let Ok(msg) = AgentMessage::decode(bytes.as_slice()) {
                feed(&mut s, "node-a", msg, 1_000_000 * i as i64);
            }
        }
        s.tick(10_000_000);
        assert_bounded(&s)?;
    }

    #[test]
    fn arbitrary_messages_keep_the_state_bounded(
        ops in prop::collection::vec((0usize..SENDERS.len(), message(), 0i64..5_000_000), 1..40),
    ) {
        let mut s = state();
        let mut now = 0;
        for (sender, mut msg, step) in ops {
            now += step;
            // Streams of a few senders, whose hellos mostly name themselves (as agents do).
            let node = SENDERS[sender];
            if let Some(agent_message::Msg::Hello(h)) = &mut msg.msg {
                if step % 4 != 0 {
                    h.node = node.to_string();
                }
            }
            // Through the wire format, as a stream delivers them.
            let decoded = AgentMessage::decode(msg.encode_to_vec().as_slice())
                .map_err(|e| TestCaseError::fail(format!("re-decoding: {e}")))?;
            feed(&mut s, node, decoded, now);
            s.tick(now);
            assert_bounded(&s)?;
        }
        let _ = kubenurse_aggregator::views::matrix_bytes(&s, now, s.settings.window_micros, kubenurse_aggregator::views::Stat::P99);
        let _ = kubenurse_aggregator::views::alive(&s, now);
        let _ = s.coverage();
    }

    #[test]
    fn any_command_line_is_accepted_or_refused_with_a_message(
        args in prop::collection::vec(prop_oneof![
            prop::sample::select(vec![
                "--window", "--hysteresis", "--gone-after", "--slow-floor", "--grpc-address", "--http-address",
                "--max-nodes", "--max-targets", "--tls-cert", "--tls-key", "--help", "-V",
                "--auth", "--auth-audience", "--auth-service-account", "--client-ca",
            ]).prop_map(String::from),
            prop::sample::select(vec!["5m", "0s", "1s", "x", "2", "101", "0", "127.0.0.1:0", "nowhere", "/etc/hostname", "-5ms",
                "tokenreview", "mtls", "none", "kubenurse:kubenurse", "a:b:c", ":"]).prop_map(String::from),
            "\\PC{0,12}",
        ], 0..8),
    ) {
        let argv = std::iter::once(OsString::from("kubenurse-aggregator")).chain(args.iter().map(OsString::from));
        match parse_args(argv) {
            Ok(a) => {
                if let Err(e) = Config::from_args(a) {
                    prop_assert!(e.to_string().contains("KUBENURSE_AGGREGATOR_"), "{e}");
                }
            }
            Err((code, text)) => prop_assert!(!text.is_empty() && (code == 0 || code == 2), "{code}: {text}"),
        }
    }
}

proptest! {
    /// Credentials are outside input too: any header, any token, any TokenReview answer.
    #[test]
    fn credentials_and_review_answers_never_panic(
        header in "\\PC{0,80}",
        token in prop_oneof!["[A-Za-z0-9_=.-]{0,200}", "\\PC{0,60}"],
        sa in "\\PC{0,40}",
        authenticated in any::<Option<bool>>(),
        audiences in prop::option::of(prop::collection::vec("[a-z-]{0,24}", 0..3)),
        username in prop::option::of("\\PC{0,60}"),
        extras in prop::collection::btree_map(
            prop::sample::select(vec![
                kubenurse_aggregator::auth::EXTRA_POD_NAME.to_string(),
                kubenurse_aggregator::auth::EXTRA_NODE_NAME.to_string(),
                "other".to_string(),
            ]),
            prop::collection::vec("\\PC{0,20}", 0..3),
            0..3,
        ),
        error in prop::option::of("\\PC{0,60}"),
        hello_node in "\\PC{0,20}",
    ) {
        use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
        use kubenurse_aggregator::auth::{bearer, binds, judge, jwt_expiry, Expectation, ServiceAccount};
        let _ = bearer(&header);
        let _ = jwt_expiry(&token);
        if let Ok(sa) = sa.parse::<ServiceAccount>() {
            prop_assert_eq!(sa.to_string().parse::<ServiceAccount>(), Ok(sa));
        }
        let expect = Expectation { audience: "kubenurse-aggregator".into(), service_account: "kubenurse:kubenurse".parse().unwrap() };
        let status = TokenReviewStatus {
            authenticated,
            audiences,
            error,
            user: Some(UserInfo { username, extra: Some(extras), ..UserInfo::default() }),
        };
        if let Ok(claims) = judge(&status, &expect) {
            prop_assert_eq!(status.authenticated, Some(true));
            prop_assert!(claims.pod.is_some() || claims.node.is_some());
            let _ = binds(&claims, None, &hello_node, "p");
        }
    }
}

#[test]
fn check_kinds_of_the_wire_are_typed() {
    // The generated enum and the domain type agree on every kind.
    for kind in
        [check::Kind::ApiServerDirect, check::Kind::ApiServerDns, check::Kind::MeIngress, check::Kind::MeService]
    {
        assert!(kubenurse_proto::CheckKind::from_wire(&Check { kind: kind.into(), name: String::new() }).is_ok());
    }
}
