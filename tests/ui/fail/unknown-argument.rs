#[perfmon::track_agent(nmae = "geometry")]
fn geometry() {}

fn main() {}
