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

/// The HTTP/2 path of every salesplan RPC (`/salesplan.v1.DealService/GetDeal`, …).
pub fn method_paths() -> Vec<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("the compiled descriptor set decodes");
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths
}
