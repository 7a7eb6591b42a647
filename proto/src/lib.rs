//! safebet's gRPC API: the `safebet.v1` protobuf messages and the tonic clients and servers generated from
//! `proto/safebet/v1/*.proto` at build time (with protox, so no system `protoc` is needed).
//!
//! Two services: [`decision_service_server::DecisionService`] (`Decide`, `DecideBatch`, `Reward`,
//! `RewardBatch`), which product services call on their hot path, and
//! [`experiment_admin_server::ExperimentAdmin`], with which operators create and steer experiments.
//! [`FILE_DESCRIPTOR_SET`] is the encoded descriptor set, for the gRPC reflection service.
//!
//! ```
//! use safebet_proto::{DecideRequest, PerActionFeatures, decide_request::{Actions, Baseline}};
//!
//! let request = DecideRequest {
//!     experiment_id: "homepage".into(),
//!     actions: Some(Actions::PerAction(PerActionFeatures {
//!         features: vec![1.0, 0.0, 0.0, 1.0],
//!         num_actions: 2,
//!         ..Default::default()
//!     })),
//!     baseline: Some(Baseline::BaselineIndex(0)),
//!     ..Default::default()
//! };
//! assert_eq!(request.experiment_id, "homepage");
//!
//! // The same features as little-endian bytes (`features_le`), read in place by the server.
//! let features: Vec<f64> = vec![1.0, 0.0, 0.0, 1.0];
//! let as_bytes = PerActionFeatures {
//!     features_le: features.iter().flat_map(|v| v.to_le_bytes()).collect(),
//!     num_actions: 2,
//!     ..Default::default()
//! };
//! assert_eq!(as_bytes.features_le.len(), 32);
//! ```

#![deny(missing_docs)]

mod codec;

pub use codec::{SliceCodec, SliceDecoder};

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("safebet.v1");
}

pub use generated::*;

/// The encoded `FileDescriptorSet` of every safebet .proto file, for
/// `tonic_reflection::server::Builder::register_encoded_file_descriptor_set`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("safebet_descriptor");
