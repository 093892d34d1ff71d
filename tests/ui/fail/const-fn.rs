#[perfmon::track_agent]
const fn geometry() -> u32 {
    1
}

fn main() {}
