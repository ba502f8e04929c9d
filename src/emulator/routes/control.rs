//! `/_emulator/...`: inspection, fault and metadata-template control for tests and benchmarks (no
//! auth).
use super::super::faults::{FaultEngine, FaultPlan};
use super::super::metadata::{parse_templates, StoredTemplate};
use super::super::Shared;
use actix_web::{web, HttpResponse};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/_emulator/state", web::get().to(state))
        .service(
            web::resource("/_emulator/faults")
                .route(web::get().to(get_faults))
                .route(web::put().to(put_faults))
                .route(web::delete().to(clear_faults)),
        )
        .service(
            web::resource("/_emulator/metadata_templates")
                .route(web::get().to(get_templates))
                .route(web::put().to(put_templates))
                .route(web::post().to(add_templates)),
        )
        .route("/_emulator/expire-tokens", web::post().to(expire_tokens))
        .route(
            "/_emulator/reset-max-parts-in-flight",
            web::post().to(reset_in_flight),
        );
}

async fn state(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.lock().inspect())
}

async fn get_faults(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(shared.faults().plan().clone())
}

async fn put_faults(body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    match serde_json::from_slice::<FaultPlan>(&body) {
        Ok(plan) => {
            *shared.faults() = FaultEngine::new(plan.clone());
            HttpResponse::Ok().json(plan)
        }
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({"error": e.to_string()})),
    }
}

async fn clear_faults(shared: web::Data<Shared>) -> HttpResponse {
    *shared.faults() = FaultEngine::new(FaultPlan::default());
    HttpResponse::NoContent().finish()
}

/// Every template, in Box's schema shape (with ids), `global.properties` included.
async fn get_templates(shared: web::Data<Shared>) -> HttpResponse {
    let state = shared.lock();
    let entries: Vec<serde_json::Value> = state.templates.values().map(StoredTemplate::json).collect();
    HttpResponse::Ok().json(serde_json::json!({ "entries": entries }))
}

/// Replaces every template but `global.properties` with the body's (the `--metadata-templates`
/// file's format). Instances of removed templates stay on their files but are no longer answered.
async fn put_templates(body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    load_templates(&body, &shared, true)
}

/// Adds the body's templates, replacing those of the same scope and key.
async fn add_templates(body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    load_templates(&body, &shared, false)
}

fn load_templates(body: &[u8], shared: &Shared, replace: bool) -> HttpResponse {
    match parse_templates(body, shared.enterprise_id()) {
        Ok(templates) => {
            let mut state = shared.lock();
            if replace {
                state.templates.retain(|_, t| t.is_properties());
            }
            for t in templates {
                state.put_template(StoredTemplate::new(t));
            }
            let entries: Vec<serde_json::Value> =
                state.templates.values().map(StoredTemplate::json).collect();
            HttpResponse::Ok().json(serde_json::json!({ "entries": entries }))
        }
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({"error": e})),
    }
}

async fn expire_tokens(shared: web::Data<Shared>) -> HttpResponse {
    expire_issued(&shared);
    HttpResponse::NoContent().finish()
}

async fn reset_in_flight(shared: web::Data<Shared>) -> HttpResponse {
    reset_max_in_flight(&shared);
    HttpResponse::NoContent().finish()
}

pub fn expire_issued(shared: &Shared) {
    for t in shared.lock().tokens.values_mut() {
        t.revoked = true;
    }
}

/// Restarts the high-water mark from the requests in flight now.
pub fn reset_max_in_flight(shared: &Shared) {
    let mut state = shared.lock();
    state.counters.max_parts_in_flight = state.counters.parts_in_flight;
    state.counters.max_parts_in_flight_per_connection =
        state.parts_per_connection.values().copied().max().unwrap_or(0);
}
