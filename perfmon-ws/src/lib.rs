//! A reusable WebSocket fan-out sidecar for perfmon. The server lands with the live-stream issue.
