//! Standard gRPC health and reflection answer, so grpcurl and grpcio clients work without the .proto files.

use safebet_proto as pb;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "safebet.v1.DecisionService", "safebet.v1.ExperimentAdmin"] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.Such".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let ask = |request: MessageRequest| ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let requests = tokio_stream::iter(vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol("safebet.v1.DecisionService".into())),
        ask(MessageRequest::FileContainingSymbol("safebet.v1.ExperimentReport".into())),
    ]);
    let mut answers = reflection.server_reflection_info(requests).await.unwrap().into_inner();
    let mut responses = Vec::new();
    while let Some(answer) = answers.next().await {
        responses.push(answer.unwrap().message_response.unwrap());
    }
    let MessageResponse::ListServicesResponse(list) = &responses[0] else { panic!("{:?}", responses[0]) };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["safebet.v1.DecisionService", "safebet.v1.ExperimentAdmin", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for response in &responses[1..] {
        let MessageResponse::FileDescriptorResponse(files) = response else { panic!("{response:?}") };
        assert!(!files.file_descriptor_proto.is_empty());
    }
    // The descriptors decode and describe the real service.
    let MessageResponse::FileDescriptorResponse(files) = &responses[1] else { unreachable!() };
    let text = files.file_descriptor_proto.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect::<String>();
    assert!(text.contains("DecideBatch") && text.contains("safebet/v1/decision.proto"), "{text}");
    let _ = pb::FILE_DESCRIPTOR_SET;
    server.stop().await.unwrap();
}

/// Every call carries a request id through the logs and back: the caller's, or one the server makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_made() {
    let server = crate::support::TestServer::start().await;
    let mut admin = server.admin().await;
    let mut request = tonic::Request::new(safebet_proto::ListExperimentsRequest {});
    request.metadata_mut().insert("x-request-id", "checkout-42".parse().unwrap());
    let response = admin.list_experiments(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "checkout-42");
    let made = admin.list_experiments(safebet_proto::ListExperimentsRequest {}).await.unwrap();
    let id = made.metadata().get("x-request-id").expect("a server-made id").to_str().unwrap().to_owned();
    assert!(!id.is_empty() && id != "checkout-42", "{id}");
    // Errors carry it too.
    let mut bad = tonic::Request::new(safebet_proto::GetReportRequest { id: "missing".into() });
    bad.metadata_mut().insert("x-request-id", "oops-1".parse().unwrap());
    let status = admin.get_report(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "oops-1");
    server.stop().await.unwrap();
}
