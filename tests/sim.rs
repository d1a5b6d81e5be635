//! The QRS simulator over real mutual TLS, driven with reqwest directly (not the project's QRS
//! client), so these tests pin the simulator's wire behaviour.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use promoter::sim::{self, Fault, Sim, SimOptions, SimSite};
use serde_json::{Value, json};

const XRF: &str = "abcdefghijklmnop";
const SA_API: &str = "UserDirectory=INTERNAL; UserId=sa_api";

fn client_for(certs: &Path) -> reqwest::Client {
    let mut pem = std::fs::read(certs.join("client.pem")).unwrap();
    pem.extend(std::fs::read(certs.join("client_key.pem")).unwrap());
    builder_with_root(certs)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap()
}

fn builder_with_root(certs: &Path) -> reqwest::ClientBuilder {
    promoter::tls::init();
    let root =
        reqwest::Certificate::from_pem(&std::fs::read(certs.join("root.pem")).unwrap()).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(20))
}

/// A QRS caller for one site.
struct Qrs {
    client: reqwest::Client,
    base: String,
    user: String,
}

impl Qrs {
    fn new(site: &SimSite) -> Qrs {
        Qrs {
            client: client_for(&site.certificates()),
            base: site.base_url(),
            user: SA_API.into(),
        }
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}xrfkey={XRF}", self.base)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("X-Qlik-Xrfkey", XRF)
            .header("X-Qlik-User", &self.user)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path)).await
    }
}

async fn send(rb: reqwest::RequestBuilder) -> (u16, Value) {
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn start(dir: &Path, sites: &[&str]) -> Sim {
    sim::start(SimOptions::new(dir, sites)).await.unwrap()
}

#[tokio::test]
async fn config_certificates_and_sim_json_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test", "prod"]).await;
    for alias in ["dev", "test", "prod"] {
        for f in ["client.pem", "client_key.pem", "root.pem"] {
            assert!(
                dir.path()
                    .join("certificates")
                    .join(alias)
                    .join(f)
                    .is_file()
            );
        }
    }
    let settings = promoter::config::Settings::load_with_env(&sim.config_path(), false).unwrap();
    assert_eq!(settings.local.alias, "dev");
    assert_eq!(settings.local.port, sim.site("dev").unwrap().port());
    assert_eq!(settings.remotes.len(), 2);
    assert_eq!(settings.remotes[1].port, sim.site("PROD").unwrap().port());
    assert!(settings.email.enabled);
    assert!(settings.versioning.enabled);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("sim.json")).unwrap())
            .unwrap();
    assert_eq!(meta["adminUrl"], sim.admin_url());
    assert_eq!(meta["sites"][2]["port"], sim.site("prod").unwrap().port());
    // The remote sites lack the local-only apps; prod lacks the Finance stream.
    let dev = sim.site("dev").unwrap();
    let prod = sim.site("prod").unwrap();
    assert!(dev.streams().contains(&"Finance".to_string()));
    assert!(!prod.streams().contains(&"Finance".to_string()));
    assert_eq!(prod.apps_in_stream("Sales").len(), 1);
    assert!(dev.apps_in_stream("Sales").len() >= 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_refuses_foreign_and_missing_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let dev = sim.site("dev").unwrap();
    let q = Qrs::new(&dev);
    let (status, about) = q.get("/qrs/about").await;
    assert_eq!(status, 200);
    assert_eq!(about["schemaPath"], "About");
    assert!(about["buildVersion"].is_string());

    // A certificate from another CA (here: the test site's own) is refused in the handshake.
    let other = client_for(&sim.site("test").unwrap().certificates());
    let r = other
        .get(q.url("/qrs/about"))
        .header("X-Qlik-Xrfkey", XRF)
        .send()
        .await;
    assert!(r.is_err(), "foreign client certificate accepted: {r:?}");
    let (_, foreign_cert, foreign_key) = sim::issue_ca_and_client("elsewhere").unwrap();
    let id =
        reqwest::Identity::from_pem(format!("{foreign_cert}{foreign_key}").as_bytes()).unwrap();
    let foreign = builder_with_root(&dev.certificates())
        .identity(id)
        .build()
        .unwrap();
    assert!(
        foreign
            .get(q.url("/qrs/about"))
            .header("X-Qlik-Xrfkey", XRF)
            .send()
            .await
            .is_err()
    );
    // No client certificate at all.
    let anonymous = builder_with_root(&dev.certificates()).build().unwrap();
    assert!(
        anonymous
            .get(q.url("/qrs/about"))
            .header("X-Qlik-Xrfkey", XRF)
            .send()
            .await
            .is_err()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn server_name_option_issues_the_certificate_to_that_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SimOptions::new(dir.path(), &["dev", "test"]);
    opts.server_name = Some("qlikserver".into());
    let sim = sim::start(opts).await.unwrap();
    let dev = sim.site("dev").unwrap();
    let q = Qrs::new(&dev);
    let err = q
        .req(reqwest::Method::GET, "/qrs/about")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let mut pem = std::fs::read(dev.certificates().join("client.pem")).unwrap();
    pem.extend(std::fs::read(dev.certificates().join("client_key.pem")).unwrap());
    let by_name = builder_with_root(&dev.certificates())
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .resolve("qlikserver", ([127, 0, 0, 1], dev.port()).into())
        .build()
        .unwrap();
    let r = by_name
        .get(format!(
            "https://qlikserver:{}/qrs/about?xrfkey={XRF}",
            dev.port()
        ))
        .header("X-Qlik-Xrfkey", XRF)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let toml = std::fs::read_to_string(sim.config_path()).unwrap();
    assert!(toml.contains("# server_name = \"qlikserver\""));
    sim.shutdown().await;
}

#[tokio::test]
async fn xrfkey_and_user_header_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let dev = sim.site("dev").unwrap();
    let q = Qrs::new(&dev);
    let url = format!("{}/qrs/about", q.base);
    let cases: Vec<(String, Option<&str>, u16)> = vec![
        (url.clone(), None, 403),
        (url.clone(), Some(XRF), 403),
        (format!("{url}?xrfkey={XRF}"), None, 403),
        (format!("{url}?xrfkey={XRF}"), Some("abcdefghijklmnoq"), 403),
        (
            format!("{url}?xrfkey=abcdefghijklmno"),
            Some("abcdefghijklmno"),
            403,
        ),
        (
            format!("{url}?xrfkey=abcdefghijklmn!p"),
            Some("abcdefghijklmn!p"),
            403,
        ),
        (format!("{url}?Xrfkey={XRF}"), Some(XRF), 200),
        (
            format!("{url}?XRFKEY=3AA3DD9062E068CD"),
            Some("3AA3DD9062E068CD"),
            200,
        ),
    ];
    for (u, header, want) in cases {
        let mut rb = q.client.get(&u);
        if let Some(h) = header {
            rb = rb.header("x-qlik-xrfkey", h);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{u} {header:?}");
        if want == 403 {
            assert_eq!(r.text().await.unwrap(), sim::XSRF_TEXT);
        }
    }
    // X-Qlik-User: lenient spacing and case; garbled is refused; absent runs as the system.
    for (h, want) in [
        ("UserDirectory=INTERNAL;UserId=sa_api", 200),
        ("userdirectory = corp ; userid = bob", 200),
        ("UserId=bob", 400),
        ("nonsense", 400),
    ] {
        let r = q
            .client
            .get(q.url("/qrs/about"))
            .header("X-Qlik-Xrfkey", XRF)
            .header("X-Qlik-User", h)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{h}");
    }
    let r = q
        .client
        .get(q.url("/qrs/about"))
        .header("X-Qlik-Xrfkey", XRF)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let calls = dev.calls();
    assert!(
        calls
            .iter()
            .all(|c| !c.path.to_lowercase().contains("xrfkey"))
    );
    assert!(calls.iter().any(|c| c.user.as_deref() == Some("corp\\bob")));
    assert!(
        calls
            .iter()
            .any(|c| c.status == 403 && c.path == "/qrs/about")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn filters_select_entities() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let dev = sim.site("dev").unwrap();
    let q = Qrs::new(&dev);
    let odd = "O'Brien & Sons: Q1 #2 / Forecast";
    let f = format!("name eq '{}'", odd.replace('\'', "''"));
    let (s, apps) = q.get(&format!("/qrs/app/full?filter={}", enc(&f))).await;
    assert_eq!(s, 200);
    assert_eq!(apps.as_array().unwrap().len(), 1);
    assert_eq!(apps[0]["name"], odd);
    assert_eq!(apps[0]["stream"]["name"], "Sales");
    assert_eq!(apps[0]["owner"]["userId"], "alice");
    assert_eq!(apps[0]["schemaPath"], "App");

    let unicode = "Überblick Logistik – 物流 ✓";
    let (_, apps) = q
        .get(&format!(
            "/qrs/app?filter={}",
            enc(&format!("name eq '{unicode}'"))
        ))
        .await;
    assert_eq!(apps[0]["name"], unicode);
    assert!(
        apps[0].get("owner").is_none(),
        "condensed apps have no owner"
    );

    let in_sales = dev.apps_in_stream("sales").len();
    let (_, count) = q
        .get(&format!(
            "/qrs/app/count?filter={}",
            enc("stream.name eq 'SALES'")
        ))
        .await;
    assert_eq!(count["value"], in_sales);

    let target = dev.app_by_name("Big Picture")[0].id.clone();
    dev.set_custom_properties(
        &target,
        &[
            ("PromoteToServer", "test - Overwrite"),
            ("PromotionApproval", "Approve"),
        ],
        "INTERNAL\\approver",
    )
    .unwrap();
    let f = "customProperties.definition.name eq 'PromotionApproval' and customProperties.value eq 'approve'";
    let (_, apps) = q.get(&format!("/qrs/app/full?filter={}", enc(f))).await;
    assert_eq!(apps.as_array().unwrap().len(), 1);
    assert_eq!(apps[0]["id"], target.as_str());
    assert_eq!(apps[0]["modifiedByUserName"], "INTERNAL\\approver");
    let (_, apps) = q
        .get(&format!(
            "/qrs/app/full?filter={}",
            enc(&format!(
                "id eq {target} or (tags.name eq 'certified' and published eq true)"
            ))
        ))
        .await;
    assert_eq!(apps.as_array().unwrap().len(), 2);

    let (_, users) = q
        .get(&format!(
            "/qrs/user/full?filter={}",
            enc("userDirectory eq 'corp' and userId eq 'alice'")
        ))
        .await;
    assert_eq!(
        users[0]["attributes"][0]["attributeValue"],
        "alice@example.com"
    );
    let (_, user) = q
        .get(&format!("/qrs/user/{}", users[0]["id"].as_str().unwrap()))
        .await;
    assert_eq!(user["userId"], "alice");

    let (_, streams) = q
        .get(&format!(
            "/qrs/stream/full?filter={}",
            enc("name eq 'Review'")
        ))
        .await;
    assert_eq!(
        streams[0]["customProperties"][0]["definition"]["name"],
        "EmailAlertOnPublishTo"
    );
    let (_, defs) = q.get("/qrs/custompropertydefinition/full").await;
    let pts = defs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "PromoteToServer")
        .unwrap();
    assert_eq!(
        pts["choiceValues"],
        json!(["test - Overwrite", "test - Duplicate"])
    );
    assert_eq!(pts["objectTypes"], json!(["App"]));

    let (s, body) = q
        .get(&format!(
            "/qrs/app/full?filter={}",
            enc("name eq 'O'Brien'")
        ))
        .await;
    assert_eq!(s, 400);
    assert_eq!(body, "Cannot parse the expression: name eq 'O'Brien'");
    let (s, empty) = q
        .get(&format!("/qrs/app?filter={}", enc("name eq 'nothing'")))
        .await;
    assert_eq!((s, empty), (200, json!([])));
    let (s, _) = q.get("/QRS/App/00000000-0000-0000-0000-000000000000").await;
    assert_eq!(s, 404);

    // Tags: find and create.
    let (s, tag) = send(
        q.req(reqwest::Method::POST, "/qrs/tag")
            .json(&json!({"name": "PromoteOnReload"})),
    )
    .await;
    assert_eq!(s, 201);
    let (_, tags) = q
        .get(&format!(
            "/qrs/tag/full?filter={}",
            enc("name eq 'promoteonreload'")
        ))
        .await;
    assert_eq!(tags[0]["id"], tag["id"]);
    sim.shutdown().await;
}

/// Exports `app_id` on `from` and streams the download straight into an upload on `to`.
async fn transfer(from: &Qrs, to: &Qrs, app_id: &str, name: &str, skip_data: bool) -> Value {
    let token = uuid::Uuid::new_v4();
    let (s, export) = send(from.req(
        reqwest::Method::POST,
        &format!("/qrs/app/{app_id}/export/{token}?skipData={skip_data}"),
    ))
    .await;
    assert_eq!(s, 201, "{export}");
    let path = export["downloadPath"].as_str().unwrap();
    assert!(path.starts_with("/tempcontent/"));
    let download = from.req(reqwest::Method::GET, path).send().await.unwrap();
    assert_eq!(download.status(), 200);
    let body = reqwest::Body::wrap_stream(download.bytes_stream());
    let (s, app) = send(
        to.req(
            reqwest::Method::POST,
            &format!("/qrs/app/upload?name={}&keepdata=true", enc(name)),
        )
        .header("Content-Type", "application/vnd.qlik.sense.app")
        .body(body),
    )
    .await;
    assert_eq!(s, 201, "{app}");
    app
}

#[tokio::test]
async fn export_download_upload_round_trip_keeps_content() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let (dev, test) = (sim.site("dev").unwrap(), sim.site("test").unwrap());
    let (qd, qt) = (Qrs::new(&dev), Qrs::new(&test));
    let src = dev.app_by_name("Budget 100% + Plan?")[0].clone();
    let name = "Budget 100% + Plan? / O'Neil & Co #1 ✓";
    let up = transfer(&qd, &qt, &src.id, name, false).await;
    assert_eq!(up["name"], name);
    assert_eq!(up["published"], false);
    assert_eq!(up["stream"], Value::Null);
    assert_eq!(up["publishTime"], "1753-01-01T00:00:00.000Z");
    assert_eq!(up["owner"]["userId"], "sa_api");
    assert_eq!(up["fileSize"], src.file_size);
    assert_eq!(up["lastReloadTime"], src.last_reload_time.as_str());
    let new_id = up["id"].as_str().unwrap();
    assert_eq!(
        test.content_checksum(new_id).await.unwrap(),
        dev.content_checksum(&src.id).await.unwrap()
    );
    assert_eq!(test.app_by_name(name).len(), 1);
    // Uploaded content lives on disk under the simulator's folder.
    assert_eq!(
        std::fs::read_dir(dir.path().join("sites/test/apps"))
            .unwrap()
            .count(),
        1
    );

    // skipData: a smaller file.
    let small = transfer(&qd, &qt, &src.id, "no data", true).await;
    assert!(small["fileSize"].as_u64().unwrap() < src.file_size);

    // A download works once, and only for the user who exported.
    let (_, export) = send(qd.req(
        reqwest::Method::POST,
        &format!("/qrs/app/{}/export/{}", src.id, uuid::Uuid::new_v4()),
    ))
    .await;
    let path = export["downloadPath"].as_str().unwrap();
    let mut other = Qrs::new(&dev);
    other.user = "UserDirectory=CORP; UserId=bob".into();
    assert_eq!(other.get(path).await.0, 403);
    let (s, _) = qd.get(path).await;
    assert_eq!(s, 200);
    assert_eq!(qd.get(path).await.0, 404);

    // Publish, replace (target keeps its id), copy (unpublished, caller's), delete.
    let sales = test.apps_in_stream("Sales")[0].clone();
    let (s, replaced) = send(qt.req(
        reqwest::Method::PUT,
        &format!("/qrs/app/{new_id}/replace?app={}", sales.id),
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(replaced["id"], sales.id.as_str());
    assert_eq!(replaced["stream"]["name"], "Sales");
    assert_eq!(
        test.content_checksum(&sales.id).await.unwrap(),
        dev.content_checksum(&src.id).await.unwrap()
    );
    let stream_id = test.apps_in_stream("Sales")[0].stream_id.clone().unwrap();
    let (s, published) = send(qt.req(
        reqwest::Method::PUT,
        &format!(
            "/qrs/app/{new_id}/publish?stream={stream_id}&name={}",
            enc("Renamed & published")
        ),
    ))
    .await;
    assert_eq!(s, 200);
    assert_eq!(published["published"], true);
    assert_eq!(published["name"], "Renamed & published");
    assert_ne!(published["publishTime"], "1753-01-01T00:00:00.000Z");
    let (s, _) = send(qt.req(
        reqwest::Method::PUT,
        &format!("/qrs/app/{new_id}/publish?stream={stream_id}"),
    ))
    .await;
    assert_eq!(s, 400, "an app is published once");
    let mut bob = Qrs::new(&test);
    bob.user = "UserDirectory=CORP; UserId=bob".into();
    let (s, copy) = send(bob.req(
        reqwest::Method::POST,
        &format!("/qrs/app/{new_id}/copy?name={}", enc("Copy #1")),
    ))
    .await;
    assert_eq!(s, 201);
    assert_eq!(copy["published"], false);
    assert_eq!(copy["owner"]["userId"], "bob");
    assert_eq!(copy["name"], "Copy #1");
    let r = qt
        .req(reqwest::Method::DELETE, &format!("/qrs/app/{new_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(test.app(new_id).is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn stale_update_gets_409_and_a_fresh_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let dev = sim.site("dev").unwrap();
    let q = Qrs::new(&dev);
    let id = dev.app_by_name("Sales Dashboard")[0].id.clone();
    let (_, mut app) = q.get(&format!("/qrs/app/{id}")).await;
    dev.set_custom_properties(
        &id,
        &[("PromotionApproval", "Approve")],
        "INTERNAL\\approver",
    )
    .unwrap();
    app["description"] = json!("changed");
    let (s, _) = send(
        q.req(reqwest::Method::PUT, &format!("/qrs/app/{id}"))
            .json(&app),
    )
    .await;
    assert_eq!(s, 409);
    let (_, mut fresh) = q.get(&format!("/qrs/app/{id}")).await;
    fresh["description"] = json!("changed");
    let (s, updated) = send(
        q.req(reqwest::Method::PUT, &format!("/qrs/app/{id}"))
            .json(&fresh),
    )
    .await;
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["description"], "changed");
    assert_eq!(updated["customProperties"][0]["value"], "Approve");
    assert_eq!(updated["modifiedByUserName"], "INTERNAL\\sa_api");
    assert!(updated["modifiedDate"].as_str() > fresh["modifiedDate"].as_str());
    sim.shutdown().await;
}

/// A local HTTP server that collects notification bodies.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
    actix_web::dev::ServerHandle,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = actix_web::HttpServer::new(move || {
        let tx = tx.clone();
        actix_web::App::new().default_service(actix_web::web::to(move |body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_str(&body).unwrap_or(Value::Null));
                actix_web::HttpResponse::Ok().finish()
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}/qrs-callback"), rx, handle)
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) -> Value {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notification within 10 s")
        .unwrap()
}

async fn nothing_more(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let r = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
    assert!(r.is_err(), "unexpected notification {r:?}");
}

#[tokio::test]
async fn notifications_are_delivered_and_forgotten_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let dev = sim.site("dev").unwrap();
    let q = Qrs::new(&dev);
    let (url, mut rx, server) = receiver().await;
    let id = dev.app_by_name("Sales Dashboard")[0].id.clone();

    let (s, reloads) = send(
        q.req(
            reqwest::Method::POST,
            "/qrs/notification?name=app&changeType=update&propertyName=lastReloadTime",
        )
        .json(&json!(url)),
    )
    .await;
    assert_eq!(s, 201);
    let reload_handle = reloads["value"].as_str().unwrap().to_string();
    let filter = enc("customProperties.definition.name eq 'PromotionApproval'");
    let (s, _) = send(
        q.req(
            reqwest::Method::POST,
            &format!("/qrs/notification?name=App&changetype=2&filter={filter}"),
        )
        .body(url.clone()),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(dev.subscriptions().len(), 2);

    // An approval made in the QMC: the filtered subscription fires, the reload one does not.
    dev.set_custom_properties(
        &id,
        &[("PromotionApproval", "Approve")],
        "INTERNAL\\approver",
    )
    .unwrap();
    let n = next(&mut rx).await;
    assert_eq!(n[0]["objectType"], "App");
    assert_eq!(n[0]["objectID"], id.as_str());
    assert_eq!(n[0]["changeType"], 2);
    assert!(
        n[0]["changedProperties"]
            .as_array()
            .unwrap()
            .contains(&json!("customProperties"))
    );
    nothing_more(&mut rx).await;

    // A reload through QRS: both fire (the app still has the approval).
    let r = q
        .req(reqwest::Method::POST, &format!("/qrs/app/{id}/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let a = next(&mut rx).await;
    let b = next(&mut rx).await;
    for n in [&a, &b] {
        assert!(
            n[0]["changedProperties"]
                .as_array()
                .unwrap()
                .contains(&json!("lastReloadTime"))
        );
        assert!(n[0]["originatorContextID"].is_string());
    }
    nothing_more(&mut rx).await;

    // The promoter's own writes notify too; duplicates on demand.
    dev.set_fault(Fault::DuplicateDeliveries(2));
    let (_, mut app) = q.get(&format!("/qrs/app/{id}")).await;
    app["description"] = json!("by the promoter");
    let (s, _) = send(
        q.req(reqwest::Method::PUT, &format!("/qrs/app/{id}"))
            .json(&app),
    )
    .await;
    assert_eq!(s, 200);
    let first = next(&mut rx).await;
    assert_eq!(next(&mut rx).await, first);
    nothing_more(&mut rx).await;
    dev.clear_faults();

    // Unsubscribe.
    let r = q
        .req(
            reqwest::Method::DELETE,
            &format!("/qrs/notification?handle={reload_handle}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(dev.subscriptions().len(), 1);

    // A restart forgets subscriptions but keeps entities.
    let (_, before) = q.get("/qrs/about").await;
    dev.restart().await;
    assert!(dev.subscriptions().is_empty());
    let (s, after) = q.get("/qrs/about").await;
    assert_eq!(s, 200);
    assert_ne!(before["simulatorStartTime"], after["simulatorStartTime"]);
    assert_eq!(dev.app(&id).unwrap().description, "by the promoter");
    dev.reload(&id).unwrap();
    nothing_more(&mut rx).await;
    server.stop(false).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn faults_status_latency_and_dropped_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let dev = sim.site("dev").unwrap();
    let q = Qrs::new(&dev);

    dev.set_fault(Fault::Status {
        status: 503,
        count: 2,
        path_contains: Some("/qrs/about".into()),
        retry_after: None,
    });
    assert_eq!(q.get("/qrs/app").await.0, 200);
    assert_eq!(q.get("/qrs/about").await.0, 503);
    assert_eq!(q.get("/qrs/about").await.0, 503);
    assert_eq!(q.get("/qrs/about").await.0, 200);

    dev.set_fault(Fault::Status {
        status: 429,
        count: 1,
        path_contains: Some("POST /qrs/app/upload".into()),
        retry_after: Some(3),
    });
    assert_eq!(q.get("/qrs/app/upload").await.0, 404, "GET is not matched");
    let r = q
        .req(reqwest::Method::POST, "/qrs/app/upload?name=x")
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");

    dev.set_fault(Fault::Latency(Duration::from_millis(1500)));
    let t = Instant::now();
    assert_eq!(q.get("/qrs/about").await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(1500));
    dev.clear_faults();
    let t = Instant::now();
    q.get("/qrs/about").await;
    assert!(t.elapsed() < Duration::from_millis(1500));

    // A download that loses its connection half-way.
    let big = dev.app_by_name("Big Picture")[0].clone();
    dev.set_fault(Fault::DropMidTransfer { count: 1 });
    let (_, export) = send(q.req(
        reqwest::Method::POST,
        &format!("/qrs/app/{}/export/{}", big.id, uuid::Uuid::new_v4()),
    ))
    .await;
    let resp = q
        .req(
            reqwest::Method::GET,
            export["downloadPath"].as_str().unwrap(),
        )
        .send()
        .await;
    let failed = match resp {
        Err(_) => true,
        Ok(r) => {
            assert_eq!(r.status(), 200);
            let mut s = r.bytes_stream();
            let mut got = 0usize;
            let mut failed = false;
            while let Some(chunk) = s.next().await {
                match chunk {
                    Ok(c) => got += c.len(),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            failed || (got as u64) < big.file_size
        }
    };
    assert!(failed, "the download was not cut");
    // The next transfer works; an upload is cut too.
    dev.set_fault(Fault::DropMidTransfer { count: 1 });
    let payload = vec![7u8; 1024 * 1024];
    let r = q
        .req(reqwest::Method::POST, "/qrs/app/upload?name=cut")
        .body(payload.clone())
        .send()
        .await;
    assert!(r.is_err(), "the upload was not cut: {r:?}");
    assert!(dev.app_by_name("cut").is_empty());
    let (s, _) = send(
        q.req(reqwest::Method::POST, "/qrs/app/upload?name=whole")
            .body(payload),
    )
    .await;
    assert_eq!(s, 201);
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_api_acts_as_a_qmc_user() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(dir.path(), &["dev", "test"]).await;
    let dev = sim.site("dev").unwrap();
    let http = reqwest::Client::new();
    let admin = sim.admin_url();
    let sites: Value = http
        .get(format!("{admin}/sites"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sites[1]["alias"], "test");

    let created: Value = http
        .post(format!("{admin}/sites/dev/apps"))
        .json(&json!({"name": "Admin app", "sizeBytes": 70000, "stream": "Sales"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let app: Value = http
        .put(format!("{admin}/sites/dev/apps/{id}/customproperties"))
        .json(&json!({"properties": {"PromoteToServer": ["test - Overwrite"], "PromotionApproval": "Approve"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app["modifiedBy"], "INTERNAL\\approver");
    assert_eq!(
        dev.app(&id).unwrap().property("PromotionApproval"),
        ["Approve"]
    );
    let r = http
        .post(format!(
            "{admin}/sites/dev/apps/{id}/customproperties/clear"
        ))
        .json(&json!({"names": ["PromotionApproval"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        dev.app(&id)
            .unwrap()
            .property("PromotionApproval")
            .is_empty()
    );

    let sum: Value = http
        .get(format!("{admin}/sites/dev/apps/{id}/checksum"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sum["checksum"], dev.content_checksum(&id).await.unwrap());
    let before = dev.app(&id).unwrap().last_reload_time;
    http.post(format!("{admin}/sites/dev/apps/{id}/reload"))
        .send()
        .await
        .unwrap();
    assert_ne!(dev.app(&id).unwrap().last_reload_time, before);
    assert_ne!(dev.content_checksum(&id).await.unwrap(), sum["checksum"]);

    let r = http
        .post(format!("{admin}/sites/dev/faults"))
        .json(&json!({"kind": "status", "status": 500, "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let q = Qrs::new(&dev);
    assert_eq!(q.get("/qrs/about").await.0, 500);
    let calls: Value = http
        .get(format!("{admin}/sites/dev/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls[0]["path"], "/qrs/about");
    assert_eq!(calls[0]["status"], 500);
    let streams: Value = http
        .get(format!("{admin}/sites/dev/streams?checksums=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sales = streams
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "Sales")
        .unwrap();
    assert!(
        sales["apps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["checksum"].is_string())
    );
    let r = http
        .post(format!("{admin}/sites/dev/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(q.get("/qrs/about").await.0, 200);
    let r = http
        .get(format!("{admin}/sites/nope/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    sim.shutdown().await;
}
