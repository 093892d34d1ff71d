#[perfmon::track_pipeline]
fn run() {}

fn main() {}
