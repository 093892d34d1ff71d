// A crate that depends only on perfmon: no tracing import, no other `use`.
#[perfmon::track_agent]
fn plain() -> u8 {
    1
}

#[perfmon::track_agent(name = "geo", fields(n = 3))]
async fn asynchronous(x: u32) -> Result<u32, std::io::Error> {
    Ok(x)
}

struct S;

impl S {
    #[perfmon::track_agent]
    fn method(&self) {}
}

#[perfmon::track_pipeline(id = "p")]
fn pipeline() -> u8 {
    plain()
}

fn main() {
    let _ = pipeline();
    let _ = asynchronous(1);
    S.method();
}
