//! The check kinds are defined once, in `CheckKind`; the dashboard generator (Python) cannot
//! import them, so this test holds its copy to the definition.

use kubenurse_proto::CheckKind;

/// The value of `NAME = ...` in the generator, as written.
fn assignment<'a>(source: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name} = ");
    source
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("grafana/generate.py has no `{name} = ...` line"))
}

#[test]
fn the_dashboard_generator_uses_the_check_kinds_labels() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../grafana/generate.py");
    let source = std::fs::read_to_string(path).expect("grafana/generate.py is readable");
    assert_eq!(assignment(&source, "PATH_PREFIX"), format!("{:?}", CheckKind::PATH_PREFIX));
    let built_in: Vec<String> = CheckKind::BUILT_IN.iter().map(|k| format!("{:?}", k.label())).collect();
    assert_eq!(assignment(&source, "BUILT_IN_CHECKS"), format!("({})", built_in.join(", ")));
    // Every other mention of a check label goes through those constants.
    let code: Vec<&str> = source.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let literal_paths = code.iter().filter(|l| l.contains("\"path_") || l.contains("'path_")).count();
    assert_eq!(literal_paths, 1, "only PATH_PREFIX may spell \"path_\" in grafana/generate.py");
}
