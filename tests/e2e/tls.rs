//! TLS: with a certificate and key the service speaks TLS only. A client that trusts the certificate's
//! issuer gets answers; one that does not, or that speaks plaintext, gets nothing.

use std::sync::Arc;
use std::time::Duration;

use safebet_proto as pb;
use safebet_service::{ServeOptions, SqliteStore, TlsFiles};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_answers_clients_that_trust_the_certificate_and_no_one_else() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let certificate = generated.cert.pem();
    let key = generated.signing_key.serialize_pem();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut options = ServeOptions::new(Arc::new(SqliteStore::open(dir.path()).unwrap()));
    options.tls = Some(TlsFiles { certificate: certificate.clone().into_bytes(), key: key.into_bytes() });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(safebet_service::run(
        listener,
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    let url = format!("https://localhost:{port}");

    let trusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&certificate)).domain_name("localhost");
    let channel = {
        let mut attempt = 0;
        loop {
            match Channel::from_shared(url.clone()).unwrap().tls_config(trusted.clone()).unwrap().connect().await {
                Ok(channel) => break channel,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("TLS client that trusts the certificate could not connect: {e:?}"),
            }
        }
    };
    let mut admin = pb::experiment_admin_client::ExperimentAdminClient::new(channel);
    admin.list_experiments(pb::ListExperimentsRequest {}).await.unwrap();

    // A client that does not trust the issuer fails the handshake.
    let untrusted = ClientTlsConfig::new().domain_name("localhost");
    let refused = match Channel::from_shared(url.clone()).unwrap().tls_config(untrusted).unwrap().connect().await {
        Err(_) => true,
        Ok(channel) => pb::experiment_admin_client::ExperimentAdminClient::new(channel)
            .list_experiments(pb::ListExperimentsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "a client that does not trust the certificate got an answer");

    // Plaintext gRPC to a TLS port gets no answer.
    let plain = match Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await {
        Err(_) => true,
        Ok(channel) => pb::experiment_admin_client::ExperimentAdminClient::new(channel)
            .list_experiments(pb::ListExperimentsRequest {})
            .await
            .is_err(),
    };
    assert!(plain, "a plaintext client got an answer from the TLS port");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
