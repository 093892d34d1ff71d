// Holding a guard across `.await` in a spawned task: rustc's error names
// the future-based API to use instead.
async fn step() {}

fn spawn<F: std::future::Future + Send + 'static>(_: F) {}

fn main() {
    spawn(async {
        let _agent = perfmon::agent("physics");
        step().await;
    });
}
