#[perfmon::track_agent]
async fn physics() -> u32 {
    "not a number"
}

fn main() {}
