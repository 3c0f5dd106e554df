//! The API's request bodies, as any local user in the socket's group could send them: parsed
//! with the same types (unknown fields refused) and checked as ferryd checks them.
#![no_main]

use ferry_core::api::*;
use ferry_core::container::checkpoint::{CheckpointRequest, RestoreRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<RunRequest>(data);
    let _ = serde_json::from_slice::<CheckpointRequest>(data);
    let _ = serde_json::from_slice::<RestoreRequest>(data);
    let _ = serde_json::from_slice::<ImportImageRequest>(data);
    let _ = serde_json::from_slice::<HostAddRequest>(data);
    let _ = serde_json::from_slice::<ResolveRequest>(data);
    let _ = serde_json::from_slice::<PullRequest>(data);
    if let Ok(req) = serde_json::from_slice::<ferry_core::exec::ExecRequest>(data) {
        let _ = req.validate();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = ferry_core::ids::ContainerName::new(s);
        let _ = ferry_core::ids::ContainerId::new(s);
        let _ = ferry_core::image::normalize_name(s);
        let _ = ferry_core::container::parse_volume(s);
    }
});
