//! The protobuf contract of salesplan: gRPC services, their messages and the events on
//! NATS JetStream. Generated at build time from `proto/salesplan/v1`.

/// `salesplan.v1`: every service, message and event.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("salesplan.v1");
}

pub mod names;
pub mod time;

/// The encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/salesplan_descriptor.bin"));
