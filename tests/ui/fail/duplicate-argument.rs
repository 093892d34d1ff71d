#[perfmon::track_agent(name = "a", name = "b")]
fn geometry() {}

fn main() {}
