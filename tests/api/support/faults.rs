//! Fault plans for the emulator, written as the JSON its `--faults` file and control endpoint take.
use box_upload_gateway::emulator::FaultPlan;
use serde_json::Value;

pub fn plan(v: Value) -> FaultPlan {
    serde_json::from_value(v).expect("a valid fault plan")
}
