#![deny(unused_must_use)]

// A sidecar stops when dropped: starting one without keeping it is a mistake.
fn main() -> Result<(), perfmon::ws::SidecarError> {
    let monitor = perfmon::Monitor::new();
    perfmon::ws::Sidecar::builder().bind("127.0.0.1:0").serve(&monitor)?;
    monitor.layer::<tracing_subscriber::Registry>();
    Ok(())
}
