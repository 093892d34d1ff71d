const GEO: &str = "geometry";

#[perfmon::track_agent(name = GEO)]
fn geometry() {}

fn main() {}
