#[perfmon::track_agent]
struct Geometry;

fn main() {}
