//! Episodic RL over gRPC: the service drives episodes exactly as the engine's learner does in-process, every
//! step is in the decision log, and a restart in the middle of an episode continues it where it was.

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use safebet_engine::rl::environments::{Environment, river_swim};
use safebet_engine::{Driver, EpisodicConfig, EpisodicLearner, RlAlgorithm, StartState, evaluate_policy};
use safebet_proto as pb;
use safebet_proto::episode_service_client::EpisodeServiceClient;
use safebet_service::Limits;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::*;

async fn episodes(server: &TestServer) -> EpisodeServiceClient<Channel> {
    EpisodeServiceClient::new(server.channel().await)
}

fn act(step: usize, state: usize) -> pb::ActRequest {
    pb::ActRequest { experiment_id: "river".into(), step: step as u32, state: state as u32 }
}

/// The report of "river".
async fn report(client: &mut EpisodeServiceClient<Channel>) -> pb::EpisodicReport {
    client
        .get_episodic_report(pb::GetEpisodicReportRequest { experiment_id: "river".into() })
        .await
        .unwrap()
        .into_inner()
}

/// Starts an episode of "river", naming it or not.
fn start(episode: Option<u64>) -> pb::StartEpisodeRequest {
    pb::StartEpisodeRequest { experiment_id: "river".into(), episode }
}

/// Ends the running episode of "river", naming it or not.
fn end(episode: Option<u64>) -> pb::EndEpisodeRequest {
    pb::EndEpisodeRequest { experiment_id: "river".into(), episode }
}

fn observe(step: usize, state: usize, action: usize, reward: f64, next: usize) -> pb::ObserveRequest {
    pb::ObserveRequest {
        experiment_id: "river".into(),
        step: step as u32,
        state: state as u32,
        action: action as u32,
        reward: Some(reward),
        next_state: next as u32,
    }
}

/// RiverSwim (6 states, horizon 20) for the conservative learner: the environment, the engine configuration
/// and the same configuration as a gRPC spec.
fn river() -> (Environment, EpisodicConfig, pb::EpisodicSpec) {
    let env = river_swim(6, 20).unwrap();
    let table: Vec<usize> = env.baseline.iter().copied().cycle().take(6 * 20).collect();
    let baseline_value = evaluate_policy(&env.mdp, &table)[env.start];
    let config = EpisodicConfig {
        algorithm: RlAlgorithm::ConservativeUcbvi,
        states: 6,
        actions: 2,
        horizon: 20,
        start: StartState::Fixed { state: env.start },
        baseline_policy: env.baseline.clone(),
        baseline_value: Some(baseline_value),
        alpha: 0.5,
        delta: 0.05,
        reward_range: [0.0, 1.0],
        bonus_scale: 1.0,
    };
    let spec = pb::EpisodicSpec {
        algorithm: pb::RlAlgorithm::ConservativeUcbvi as i32,
        states: 6,
        actions: 2,
        horizon: 20,
        start_state: env.start as u32,
        baseline_policy: env.baseline.iter().map(|&a| a as u32).collect(),
        baseline_value: Some(baseline_value),
        alpha: Some(0.5),
        ..Default::default()
    };
    (env, config, spec)
}

/// One step of the environment: the reward of (state, action) and a next state drawn from its distribution.
fn transition(env: &Environment, rng: &mut Xoshiro256PlusPlus, state: usize, action: usize) -> (f64, usize) {
    let u: f64 = rng.random();
    let distribution = env.mdp.next_state_distribution(state, action);
    let mut next = distribution.len() - 1;
    let mut acc = 0.0;
    for (s, p) in distribution.iter().enumerate() {
        acc += p;
        if u < acc {
            next = s;
            break;
        }
    }
    (env.mdp.rewards[state * env.mdp.actions + action], next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodes_over_grpc_equal_the_engine_and_survive_a_restart_mid_episode() {
    let (env, config, spec) = river();
    let mut local = EpisodicLearner::new(config).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let mut client = episodes(&server).await;
    client
        .create_episodic_experiment(pb::CreateEpisodicExperimentRequest {
            id: "river".into(),
            spec: Some(spec.clone()),
        })
        .await
        .unwrap();
    let again = client
        .create_episodic_experiment(pb::CreateEpisodicExperimentRequest { id: "river".into(), spec: Some(spec) })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let mut learner_episodes = 0;
    let mut return_sum = 0.0;
    for episode in 0..40u64 {
        let plan = client.start_episode(start(None)).await.unwrap().into_inner();
        let expected = local.start_episode().unwrap();
        assert_eq!(plan.episode, expected.episode);
        let driver = if expected.driver == Driver::Learner { pb::Driver::Learner } else { pb::Driver::Baseline };
        assert_eq!(plan.driver, driver as i32, "episode {episode}: who drives");
        learner_episodes += u64::from(expected.driver == Driver::Learner);
        let mut state = env.start;
        for step in 0..20 {
            if episode == 25 && step == 10 {
                // Restart in the middle of the episode: the new process continues it.
                server.stop().await.unwrap();
                server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
                client = episodes(&server).await;
                let report = report(&mut client).await;
                assert!(report.episode_running, "the episode is still running after the restart");
                assert_eq!(report.episodes, 26);
            }
            let action = client.act(act(step, state)).await.unwrap().into_inner().action as usize;
            assert_eq!(action, local.action(step, state).unwrap(), "episode {episode}, step {step}");
            let (reward, next) = transition(&env, &mut rng, state, action);
            client.observe(observe(step, state, action, reward, next)).await.unwrap();
            local.observe(step, state, action, reward, next).unwrap();
            state = next;
        }
        let summary = client.end_episode(end(None)).await.unwrap().into_inner();
        let expected = local.end_episode().unwrap();
        assert_eq!(summary.episode_return.to_bits(), expected.episode_return.to_bits());
        return_sum += expected.episode_return;
    }
    let report = report(&mut client).await;
    let stats = local.stats();
    assert_eq!(
        (report.episodes, report.learner_episodes, report.steps),
        (stats.episodes, stats.learner_episodes, stats.steps)
    );
    eprintln!("40 RiverSwim episodes over gRPC, {learner_episodes} driven by the learner, restart in episode 25");
    server.stop().await.unwrap();

    // `safebet log --transitions` exports every step with its episode and who drove it.
    let csv = dir.path().join("transitions.csv");
    export_log(dir.path(), "csv", &["--transitions"], &csv);
    let lines = export_log(dir.path(), "jsonl", &["--transitions"], &dir.path().join("transitions.jsonl"));
    assert_eq!(lines.len(), 40 * 20);
    assert_eq!(lines.iter().filter(|l| l["driver"] == "learner").count() as u64, learner_episodes * 20);
    assert_eq!((lines[0]["episode"].clone(), lines[0]["step"].clone()), (0.into(), 0.into()));
    assert_eq!((lines[799]["episode"].clone(), lines[799]["step"].clone()), (39.into(), 19.into()));
    let total: f64 = lines.iter().map(|l| l["reward"].as_f64().unwrap()).sum();
    assert!((total - return_sum).abs() < 1e-9, "exported rewards {total}, episode returns {return_sum}");
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 801, "a header and a line per step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_episodic_calls_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let mut client = episodes(&server).await;
    let mut admin = server.admin().await;
    create(&mut admin, "bandit", shared_spec(pb::Algorithm::Clucb, 2)).await;
    let spec = pb::EpisodicSpec {
        algorithm: pb::RlAlgorithm::Ucbvi as i32,
        states: 3,
        actions: 2,
        horizon: 4,
        baseline_policy: vec![0, 0, 0],
        ..Default::default()
    };
    let create =
        |id: &str, spec: pb::EpisodicSpec| pb::CreateEpisodicExperimentRequest { id: id.into(), spec: Some(spec) };
    let clash = client.create_episodic_experiment(create("bandit", spec.clone())).await.unwrap_err();
    assert_eq!(clash.code(), Code::AlreadyExists, "ids are shared with bandit experiments");
    let mut bad = spec.clone();
    bad.baseline_policy = vec![0, 5, 0];
    assert_eq!(client.create_episodic_experiment(create("x", bad)).await.unwrap_err().code(), Code::InvalidArgument);
    let mut bad = spec.clone();
    bad.algorithm = 0;
    assert_eq!(client.create_episodic_experiment(create("x", bad)).await.unwrap_err().code(), Code::InvalidArgument);
    client.create_episodic_experiment(create("river", spec)).await.unwrap();

    let before = report(&mut client).await;
    // Nothing is running yet.
    let not_started = client.act(act(0, 0)).await.unwrap_err();
    assert_eq!(not_started.code(), Code::FailedPrecondition, "{not_started:?}");
    assert_eq!(client.observe(observe(0, 0, 0, 0.0, 1)).await.unwrap_err().code(), Code::FailedPrecondition);
    let ended = client.end_episode(end(None)).await.unwrap_err();
    assert_eq!(ended.code(), Code::FailedPrecondition);
    assert_eq!(report(&mut client).await, before);

    client.start_episode(start(None)).await.unwrap();
    let running = report(&mut client).await;
    let twice = client.start_episode(start(None)).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
    for (request, code, what) in [
        (observe(1, 0, 0, 0.0, 1), Code::FailedPrecondition, "a step out of order"),
        (observe(0, 7, 0, 0.0, 1), Code::InvalidArgument, "a state out of range"),
        (observe(0, 0, 9, 0.0, 1), Code::InvalidArgument, "an action out of range"),
        (observe(0, 0, 0, f64::NAN, 1), Code::InvalidArgument, "a NaN reward"),
        (observe(0, 0, 0, 3.0, 1), Code::InvalidArgument, "a reward out of range"),
        (observe(0, 0, 0, 0.0, 3), Code::InvalidArgument, "a next state out of range"),
        (pb::ObserveRequest { reward: None, ..observe(0, 0, 0, 0.0, 1) }, Code::InvalidArgument, "no reward"),
        (pb::ObserveRequest { experiment_id: "nope".into(), ..observe(0, 0, 0, 0.0, 1) }, Code::NotFound, "unknown"),
    ] {
        let refused = client.observe(request).await.unwrap_err();
        assert_eq!(refused.code(), code, "{what}: {refused:?}");
        assert_eq!(report(&mut client).await, running, "{what} changed the experiment");
    }
    assert_eq!(client.act(act(0, 9)).await.unwrap_err().code(), Code::InvalidArgument);
    let unknown = client
        .start_episode(pb::StartEpisodeRequest { experiment_id: "nope".into(), episode: None })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

/// `kill -9` of the real binary twice in the middle of episodes (once right after a periodic snapshot, once
/// with only the log since the last one): every acknowledged start and transition is recovered, and the
/// learner goes on exactly as an uninterrupted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_episode_continues_as_an_uninterrupted_learner() {
    use crate::durability::{connect, spawn_server};

    let (env, config, spec) = river();
    let mut local = EpisodicLearner::new(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let experiments = dir.path().join("experiments.toml");
    std::fs::write(&experiments, "").unwrap();
    let data = dir.path().join("data");
    let (mut child, address, _drain) = spawn_server(&data, &experiments);
    let mut client = EpisodeServiceClient::new(connect(&address).await);
    client
        .create_episodic_experiment(pb::CreateEpisodicExperimentRequest { id: "river".into(), spec: Some(spec) })
        .await
        .unwrap();

    // (episode, step) before whose action the server is killed, and whether to first wait for a snapshot.
    let kills = [(3u64, 7usize, true), (6, 13, false)];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(17);
    for episode in 0..8u64 {
        let plan = client.start_episode(start(Some(episode))).await.unwrap().into_inner();
        let mut last_observe: Option<(pb::ObserveRequest, u64)> = None;
        let expected = local.start_episode().unwrap();
        assert_eq!(plan.episode, expected.episode);
        let driver = if expected.driver == Driver::Learner { pb::Driver::Learner } else { pb::Driver::Baseline };
        assert_eq!(plan.driver, driver as i32, "episode {episode}: who drives");
        let mut state = env.start;
        for step in 0..20 {
            if let Some(&(_, _, snapshot_first)) = kills.iter().find(|k| (k.0, k.1) == (episode, step)) {
                if snapshot_first {
                    // The server snapshots every second: recovery then starts from a snapshot taken mid-episode.
                    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                }
                child.kill_9();
                let (restarted, address, _) = spawn_server(&data, &experiments);
                child = restarted;
                client = EpisodeServiceClient::new(connect(&address).await);
                let report = report(&mut client).await;
                assert!(report.episode_running, "episode {episode} is still running after kill -9");
                assert_eq!((report.episodes, report.steps), (episode + 1, local.stats().steps));
                // A client that never heard back from its last calls sends them again: same answers, and the
                // learner (checked by the actions below) learns from nothing twice.
                let again = client.start_episode(start(Some(episode))).await.unwrap().into_inner();
                assert_eq!(again, plan, "episode {episode}: a retried start after kill -9");
                if let Some((request, steps)) = last_observe.clone() {
                    let answer = client.observe(request).await.unwrap().into_inner();
                    assert_eq!(answer.steps, steps, "episode {episode}: a retried observe after kill -9");
                }
            }
            let action = client.act(act(step, state)).await.unwrap().into_inner().action as usize;
            assert_eq!(action, local.action(step, state).unwrap(), "episode {episode}, step {step}");
            let (reward, next) = transition(&env, &mut rng, state, action);
            let request = observe(step, state, action, reward, next);
            let steps = client.observe(request.clone()).await.unwrap().into_inner().steps;
            last_observe = Some((request, steps));
            local.observe(step, state, action, reward, next).unwrap();
            state = next;
        }
        let summary = client.end_episode(end(Some(episode))).await.unwrap().into_inner();
        assert_eq!(summary.episode_return.to_bits(), local.end_episode().unwrap().episode_return.to_bits());
    }
    child.kill_9();
}

/// A refusal with `code` and a message that says why.
fn refused(call: &str, status: tonic::Status, code: Code) {
    assert_eq!(status.code(), code, "{call}: {status:?}");
    assert!(!status.message().is_empty(), "{call}: the refusal says why");
}

/// Every episode call can be retried after its answer was lost: a start or an end that names its episode and
/// the latest transition get their first answer again, before and after a restart, and the learner counts
/// nothing twice; a retry that does not match what was done is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_episode_calls_get_their_first_answer_and_change_nothing() {
    let (env, config, spec) = river();
    let mut local = EpisodicLearner::new(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let mut client = episodes(&server).await;
    client
        .create_episodic_experiment(pb::CreateEpisodicExperimentRequest { id: "river".into(), spec: Some(spec) })
        .await
        .unwrap();

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    for episode in 0..6u64 {
        if episode == 3 {
            server.stop().await.unwrap();
            server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
            client = episodes(&server).await;
            // The end of episode 2 is answered again after the restart (rebuilt from the log).
            let again = client.end_episode(end(Some(2))).await.unwrap().into_inner();
            assert_eq!((again.episode, again.steps), (2, 20));
        }
        let too_far = client.start_episode(start(Some(episode + 1))).await.unwrap_err();
        refused("starting an episode that is not the next", too_far, Code::FailedPrecondition);
        let plan = client.start_episode(start(Some(episode))).await.unwrap().into_inner();
        assert_eq!(plan.episode, local.start_episode().unwrap().episode);
        let running = report(&mut client).await;
        assert_eq!(client.start_episode(start(Some(episode))).await.unwrap().into_inner(), plan, "a retried start");
        let unnamed = client.start_episode(start(None)).await.unwrap_err();
        refused("an unnamed second start", unnamed, Code::FailedPrecondition);
        let other = client.start_episode(start(Some(episode + 1))).await.unwrap_err();
        refused("starting another episode while one runs", other, Code::FailedPrecondition);
        let wrong_end = client.end_episode(end(Some(episode + 1))).await.unwrap_err();
        refused("ending an episode that is not running", wrong_end, Code::FailedPrecondition);
        assert_eq!(report(&mut client).await, running, "episode {episode}: retries and refusals changed nothing");

        let mut state = env.start;
        for step in 0..20 {
            let action = client.act(act(step, state)).await.unwrap().into_inner().action as usize;
            assert_eq!(action, local.action(step, state).unwrap(), "episode {episode}, step {step}");
            let (reward, next) = transition(&env, &mut rng, state, action);
            let request = observe(step, state, action, reward, next);
            let steps = client.observe(request.clone()).await.unwrap().into_inner().steps;
            local.observe(step, state, action, reward, next).unwrap();
            if step % 7 == 3 {
                if episode == 4 && step == 10 {
                    server.stop().await.unwrap();
                    server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
                    client = episodes(&server).await;
                }
                let before = report(&mut client).await;
                let again = client.observe(request.clone()).await.unwrap().into_inner().steps;
                assert_eq!(again, steps, "episode {episode}, step {step}: a retried observe");
                let changed = pb::ObserveRequest { reward: Some(1.0 - reward), ..request.clone() };
                let clash = client.observe(changed).await.unwrap_err();
                refused("a different transition for an observed step", clash, Code::AlreadyExists);
                let older = pb::ObserveRequest { step: step as u32 - 1, ..request };
                let stale = client.observe(older).await.unwrap_err();
                refused("a transition for an earlier step", stale, Code::FailedPrecondition);
                assert_eq!(report(&mut client).await, before, "step {step}: retries and refusals changed nothing");
            }
            state = next;
        }
        let summary = client.end_episode(end(Some(episode))).await.unwrap().into_inner();
        let expected = local.end_episode().unwrap();
        assert_eq!(summary.episode_return.to_bits(), expected.episode_return.to_bits());
        let ended = report(&mut client).await;
        assert_eq!(client.end_episode(end(Some(episode))).await.unwrap().into_inner(), summary, "a retried end");
        let unnamed = client.end_episode(end(None)).await.unwrap_err();
        refused("an unnamed second end", unnamed, Code::FailedPrecondition);
        let stale = client.start_episode(start(Some(episode))).await.unwrap_err();
        refused("starting an episode that has ended", stale, Code::FailedPrecondition);
        assert_eq!(report(&mut client).await, ended, "episode {episode}: retries after the end changed nothing");
    }
    let stats = local.stats();
    let last = report(&mut client).await;
    assert_eq!(
        (last.episodes, last.learner_episodes, last.steps),
        (stats.episodes, stats.learner_episodes, stats.steps)
    );
    server.stop().await.unwrap();
}

/// The learner of `river()` as an `[[episodic]]` table of an experiments file.
fn declared_river(config: &EpisodicConfig) -> String {
    let StartState::Fixed { state } = config.start else { unreachable!("river starts in a fixed state") };
    format!(
        "[[episodic]]\nid = \"river\"\n[episodic.learner]\nalgorithm = \"conservative_ucbvi\"\nstates = {}\n\
         actions = {}\nhorizon = {}\nstart = {{ kind = \"fixed\", state = {state} }}\nbaseline_policy = {:?}\n\
         baseline_value = {:?}\nalpha = {:?}\n",
        config.states,
        config.actions,
        config.horizon,
        config.baseline_policy,
        config.baseline_value.unwrap(),
        config.alpha
    )
}

/// `safebet serve --experiments FILE` creates the episodic experiments the file declares, exactly as the API
/// would; a restart with a changed declaration keeps the stored learner and its history; a declaration the
/// service would refuse over the API stops the server before it serves, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodic_experiments_declared_in_the_experiments_file() {
    use crate::durability::{connect, spawn_server};

    let (env, config, spec) = river();
    let mut local = EpisodicLearner::new(config.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let experiments = dir.path().join("experiments.toml");
    std::fs::write(&experiments, declared_river(&config)).unwrap();
    let data = dir.path().join("data");

    let (mut child, address, _drain) = spawn_server(&data, &experiments);
    let mut client = EpisodeServiceClient::new(connect(&address).await);
    let taken = client
        .create_episodic_experiment(pb::CreateEpisodicExperimentRequest { id: "river".into(), spec: Some(spec) })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "the declared experiment exists: {taken:?}");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    for episode in 0..2u64 {
        let plan = client.start_episode(start(Some(episode))).await.unwrap().into_inner();
        let expected = local.start_episode().unwrap();
        assert_eq!((plan.episode, plan.margin), (expected.episode, expected.margin), "the declared learner");
        let mut state = env.start;
        for step in 0..20 {
            let action = client.act(act(step, state)).await.unwrap().into_inner().action as usize;
            assert_eq!(action, local.action(step, state).unwrap(), "episode {episode}, step {step}");
            let (reward, next) = transition(&env, &mut rng, state, action);
            client.observe(observe(step, state, action, reward, next)).await.unwrap();
            local.observe(step, state, action, reward, next).unwrap();
            state = next;
        }
        client.end_episode(end(Some(episode))).await.unwrap();
        local.end_episode().unwrap();
    }
    child.kill_9();

    // A changed declaration does not reset the stored learner.
    let changed = declared_river(&EpisodicConfig { alpha: 0.05, ..config.clone() });
    std::fs::write(&experiments, changed).unwrap();
    let (mut child, address, _drain) = spawn_server(&data, &experiments);
    let mut client = EpisodeServiceClient::new(connect(&address).await);
    let report = report(&mut client).await;
    assert_eq!((report.episodes, report.steps), (2, 40), "the stored history is kept");
    let plan = client.start_episode(start(Some(2))).await.unwrap().into_inner();
    assert_eq!(plan.margin, local.start_episode().unwrap().margin, "the stored learner (alpha 0.5) goes on");
    child.kill_9();

    // Declared with the kill switch on: the baseline policy drives from the first episode.
    let held = declared_river(&EpisodicConfig { algorithm: RlAlgorithm::Ucbvi, ..config.clone() })
        .replace("id = \"river\"\n", "id = \"held\"\npaused = true\n")
        .replace("conservative_ucbvi", "ucbvi");
    std::fs::write(&experiments, held).unwrap();
    let (mut child, address, _drain) = spawn_server(&data, &experiments);
    let mut client = EpisodeServiceClient::new(connect(&address).await);
    let listed = client.list_episodic_experiments(pb::ListEpisodicExperimentsRequest {}).await.unwrap().into_inner();
    let ids: Vec<_> = listed.experiments.iter().map(|e| (e.id.as_str(), e.paused)).collect();
    assert_eq!(ids, [("held", true), ("river", false)], "declared paused; the stored one kept");
    let plan = client
        .start_episode(pb::StartEpisodeRequest { experiment_id: "held".into(), episode: Some(0) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.driver, pb::Driver::Baseline as i32, "UCBVI, but the switch is on");
    child.kill_9();

    // Declarations the API would refuse: the server stops before serving and says why.
    let bad_declarations = [
        (declared_river(&config).replace("horizon = 20", "horizon = 0"), "horizon"),
        (declared_river(&config).replace("id = \"river\"", "id = \"a b\""), "a b"),
        (
            declared_river(&EpisodicConfig { states: 2000, baseline_policy: vec![0; 2000], ..config.clone() }),
            "planning",
        ),
        (format!("{}\n{}", declared_river(&config), declared_river(&config)), "declared twice"),
    ];
    for (text, reason) in bad_declarations {
        std::fs::write(&experiments, &text).unwrap();
        let fresh = dir.path().join(format!("fresh-{}", reason.len()));
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_safebet"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&fresh)
            .arg("--experiments")
            .arg(&experiments)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success(), "{reason}: the server refused to start ({said})");
        assert!(said.contains(reason), "{reason}: the error says why: {said}");
        assert!(!said.contains("safebet serving"), "{reason}: nothing was served");
    }
}

/// Operators see episodic experiments like bandit ones: listed by id, each with its spec (defaults filled in),
/// and their creation and deletion in the audit trail with the state before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn episodic_experiments_are_listed_and_audited() {
    use safebet_proto::experiment_admin_client::ExperimentAdminClient;

    let server = TestServer::start().await;
    let mut client = episodes(&server).await;
    let (_, _, spec) = river();
    let mut created = Vec::new();
    for id in ["river", "creek"] {
        let request = pb::CreateEpisodicExperimentRequest { id: id.into(), spec: Some(spec.clone()) };
        created.push(client.create_episodic_experiment(request).await.unwrap().into_inner());
    }
    assert_eq!(created[0].spec.as_ref().unwrap().delta, Some(0.05), "defaults are filled in");
    let listed = client.list_episodic_experiments(pb::ListEpisodicExperimentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.experiments, vec![created[1].clone(), created[0].clone()], "ordered by id");
    let got = client
        .get_episodic_experiment(pb::GetEpisodicExperimentRequest { experiment_id: "river".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created[0]);
    let unknown = client
        .get_episodic_experiment(pb::GetEpisodicExperimentRequest { experiment_id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    client.start_episode(start(Some(0))).await.unwrap();
    client
        .delete_episodic_experiment(pb::DeleteEpisodicExperimentRequest { experiment_id: "river".into() })
        .await
        .unwrap();
    let listed = client.list_episodic_experiments(pb::ListEpisodicExperimentsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.experiments, vec![created[1].clone()]);

    let mut admin = ExperimentAdminClient::new(server.channel().await);
    let trail = admin
        .list_audit_entries(pb::ListAuditEntriesRequest { experiment_id: "river".into() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["create_episodic", "delete_episodic"], "{trail:?}");
    let after_create: serde_json::Value = serde_json::from_str(&trail[0].after).unwrap();
    assert_eq!(after_create["learner"]["horizon"], 20);
    assert_eq!(trail[0].before, "", "nothing before the creation");
    let before_delete: serde_json::Value = serde_json::from_str(&trail[1].before).unwrap();
    assert_eq!(before_delete["episodes"], 1, "the state the deletion threw away");
    assert_eq!(trail[1].after, "", "nothing after the deletion");
    server.stop().await.unwrap();
}

/// The operator's controls over gRPC: the kill switch hands new episodes to the baseline policy (UCBVI would
/// drive every one otherwise), the risk budget changes (bad values refused, nothing changed), every change is
/// audited, and all of it survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_and_rebudget_an_episodic_experiment() {
    use safebet_proto::experiment_admin_client::ExperimentAdminClient;

    let (env, _, mut spec) = river();
    spec.algorithm = pb::RlAlgorithm::Ucbvi as i32;
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    let mut client = episodes(&server).await;
    client
        .create_episodic_experiment(pb::CreateEpisodicExperimentRequest { id: "river".into(), spec: Some(spec) })
        .await
        .unwrap();
    let river = || "river".to_string();
    let paused = client
        .pause_episodic_experiment(pb::PauseEpisodicExperimentRequest { experiment_id: river() })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut play = async |client: &mut EpisodeServiceClient<Channel>, episode: u64| {
        let plan = client.start_episode(start(Some(episode))).await.unwrap().into_inner();
        let mut state = env.start;
        for step in 0..20 {
            let action = client.act(act(step, state)).await.unwrap().into_inner().action as usize;
            if plan.driver == pb::Driver::Baseline as i32 {
                assert_eq!(action, env.baseline[state], "episode {episode}: the baseline policy drives");
            }
            let (reward, next) = transition(&env, &mut rng, state, action);
            client.observe(observe(step, state, action, reward, next)).await.unwrap();
            state = next;
        }
        client.end_episode(end(Some(episode))).await.unwrap();
        plan.driver
    };
    assert_eq!(play(&mut client, 0).await, pb::Driver::Baseline as i32, "paused: the baseline drives");

    let before = report(&mut client).await;
    for (alpha, what) in [(None, "missing"), (Some(f64::NAN), "NaN"), (Some(1.0), "1"), (Some(-0.5), "negative")] {
        let refused = client
            .update_episodic_risk_budget(pb::UpdateEpisodicRiskBudgetRequest { experiment_id: river(), alpha })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "alpha {what}: {refused:?}");
        assert!(refused.message().contains("alpha"), "alpha {what}: {}", refused.message());
    }
    assert_eq!(report(&mut client).await, before, "refused budgets changed nothing");
    let rebudgeted = client
        .update_episodic_risk_budget(pb::UpdateEpisodicRiskBudgetRequest { experiment_id: river(), alpha: Some(0.3) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rebudgeted.spec.unwrap().alpha, Some(0.3));

    server.stop().await.unwrap();
    server = TestServer::start_with(dir.path(), vec![], Limits::default()).await;
    client = episodes(&server).await;
    let restarted = report(&mut client).await;
    assert_eq!((restarted.paused, restarted.alpha), (true, 0.3), "the switch and the budget survive a restart");
    assert_eq!(play(&mut client, 1).await, pb::Driver::Baseline as i32);
    let resumed = client
        .resume_episodic_experiment(pb::ResumeEpisodicExperimentRequest { experiment_id: river() })
        .await
        .unwrap()
        .into_inner();
    assert!(!resumed.paused);
    assert_eq!(play(&mut client, 2).await, pb::Driver::Learner as i32, "resumed: UCBVI drives again");
    let unknown = client
        .pause_episodic_experiment(pb::PauseEpisodicExperimentRequest { experiment_id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut admin = ExperimentAdminClient::new(server.channel().await);
    let trail = admin
        .list_audit_entries(pb::ListAuditEntriesRequest { experiment_id: river() })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<_> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["create_episodic", "pause", "update_risk_budget", "resume"], "{trail:?}");
    let state = |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap();
    assert_eq!(
        (state(&trail[1].before)["paused"].clone(), state(&trail[1].after)["paused"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(state(&trail[2].after)["learner"]["alpha"], 0.3);
    server.stop().await.unwrap();
}

/// `safebet export` / `safebet import` move an episodic experiment, in the middle of an episode, to another
/// server (keyed: the CLI sends SAFEBET_API_KEY), where it continues exactly as the original; a model that
/// is not a consistent learner is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episodic_experiment_moves_between_servers_mid_episode() {
    let (env, _, spec) = river();
    let home = TestServer::start().await;
    let (away_key, player_key) = ("away-admin-key", "away-player-key");
    let hash = safebet_service::hash_key;
    let keys =
        safebet_service::Keys::parse_env(&format!("ops:admin:{},player:decide:{}", hash(away_key), hash(player_key)))
            .unwrap();
    let away_dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(safebet_service::SqliteStore::open(away_dir.path()).unwrap());
    let away = TestServer::start_keyed(store, vec![], Limits::default(), keys).await;
    let mut client = episodes(&home).await;
    client
        .create_episodic_experiment(pb::CreateEpisodicExperimentRequest { id: "river".into(), spec: Some(spec) })
        .await
        .unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
    let mut state = env.start;
    // Five whole episodes, then five steps into the sixth.
    for episode in 0..6u64 {
        client.start_episode(start(Some(episode))).await.unwrap();
        state = env.start;
        for step in 0..if episode == 5 { 5 } else { 20 } {
            let action = client.act(act(step, state)).await.unwrap().into_inner().action as usize;
            let (reward, next) = transition(&env, &mut rng, state, action);
            client.observe(observe(step, state, action, reward, next)).await.unwrap();
            state = next;
        }
        if episode < 5 {
            client.end_episode(end(Some(episode))).await.unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("river.json");
    let cli = |args: &[&str], server: &TestServer, key: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_safebet"));
        command.args(args).arg("--server").arg(server.url());
        match key {
            Some(key) => command.env("SAFEBET_API_KEY", key),
            None => command.env_remove("SAFEBET_API_KEY"),
        };
        command.output().unwrap()
    };
    let exported = cli(&["export", "river", "--output", file.to_str().unwrap()], &home, None);
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let refused = cli(&["import", file.to_str().unwrap()], &away, None);
    assert!(!refused.status.success(), "the keyed server wants a key");
    let imported = cli(&["import", file.to_str().unwrap()], &away, Some(away_key));
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));

    // Both sides finish the running episode and play two more the same way.
    let bearer = |key: &'static str| {
        move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
            Ok(request)
        }
    };
    let mut there_keyed = EpisodeServiceClient::with_interceptor(away.channel().await, bearer(player_key));
    let mut there_admin = EpisodeServiceClient::with_interceptor(away.channel().await, bearer(away_key));
    for episode in 5..8u64 {
        let first = if episode == 5 { 5 } else { 0 };
        if episode > 5 {
            let a = client.start_episode(start(Some(episode))).await.unwrap().into_inner();
            let b = there_keyed.start_episode(start(Some(episode))).await.unwrap().into_inner();
            assert_eq!(a, b, "episode {episode}: the same plan on both servers");
            state = env.start;
        }
        for step in first..20 {
            let a = client.act(act(step, state)).await.unwrap().into_inner().action as usize;
            let b = there_keyed.act(act(step, state)).await.unwrap().into_inner().action as usize;
            assert_eq!(a, b, "episode {episode}, step {step}");
            let (reward, next) = transition(&env, &mut rng, state, a);
            client.observe(observe(step, state, a, reward, next)).await.unwrap();
            there_keyed.observe(observe(step, state, a, reward, next)).await.unwrap();
            state = next;
        }
        let a = client.end_episode(end(Some(episode))).await.unwrap().into_inner();
        let b = there_keyed.end_episode(end(Some(episode))).await.unwrap().into_inner();
        assert_eq!(a, b);
    }
    let bad_models = [
        (br#"{"format": "safebet-episodic/1", "id": "x"}"#.to_vec(), "state"),
        (br#"{"format": "safebet-experiment/1", "id": "x", "state": {}}"#.to_vec(), "format"),
        (std::fs::read_to_string(&file).unwrap().replacen("\"visits\":[", "\"visits\":[1,", 1).into_bytes(), "visits"),
    ];
    for (model, reason) in bad_models {
        let request = pb::ImportEpisodicExperimentRequest { model, id: "copy".into() };
        let refused = there_admin.import_episodic_experiment(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(reason), "{reason}: {}", refused.message());
    }
    home.stop().await.unwrap();
    away.stop().await.unwrap();
}
