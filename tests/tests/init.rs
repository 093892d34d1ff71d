//! `perfmon::init` installs a global subscriber: alone in its own test binary.

#[test]
fn init_records_globally_and_a_second_init_says_what_to_do() {
    let monitor = perfmon::try_init().expect("no global subscriber yet in this binary");
    let pipeline = monitor.start_pipeline("global");
    drop(perfmon::agent("everywhere"));
    let report = pipeline.finish();
    assert_eq!(report.agents.len(), 1);

    let err = perfmon::try_init().expect_err("a global subscriber exists now");
    assert!(err.to_string().contains("add `monitor.layer()`"), "{err}");
    let panic = std::panic::catch_unwind(perfmon::init).expect_err("init panics the second time");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("perfmon::init"), "{message}");
}
