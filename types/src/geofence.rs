//! Geofences: loading from GeoJSON, validation and membership (semantics §5).
//!
//! A geofence is a GeoJSON `Feature` whose geometry is a `Polygon` or `MultiPolygon`
//! (holes honoured) or a `Point` with `properties.radius_m` (a circle). Its id is the
//! feature's `id`, else `properties.id`, else the property named by
//! `[geofences].id_property`. `properties.tenant`, when present, limits it to that tenant's
//! vehicles.
//!
//! Membership: a point on a polygon's boundary (outer ring or hole) is inside, a point in a
//! hole is outside; a circle contains the points within `radius_m` by haversine distance.
//! Polygons are tested in the WGS84 lon/lat plane, as GeoJSON intends.
//!
//! Bad features (no id, unclosed or too-short rings, self-intersections, non-finite
//! coordinates, a radius that is not a positive number, an unsupported geometry) are
//! rejected one by one with a [`GeofenceError`] that names the feature; the rest load.

use crate::fix::{haversine_km, EARTH_RADIUS_KM};
use compact_str::CompactString;
use geo::coordinate_position::{coord_pos_relative_to_ring, CoordPos};
use geo::{Coord, LineString, MultiPolygon, Polygon, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The area a geofence covers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    /// One or more polygons (x = longitude, y = latitude), holes honoured.
    Polygons(MultiPolygon<f64>),
    /// Points within `radius_m` (haversine) of a center.
    Circle {
        /// Center latitude.
        lat: f64,
        /// Center longitude.
        lon: f64,
        /// Radius in metres (> 0).
        radius_m: f64,
    },
}

/// A validated geofence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geofence {
    /// Identifier (unique in the job).
    pub id: CompactString,
    /// When set, the geofence applies only to this tenant's vehicles.
    pub tenant: Option<CompactString>,
    /// Its area.
    pub shape: Shape,
    /// The feature's properties, kept for listing.
    #[serde(with = "properties")]
    pub properties: Map<String, Value>,
}

/// Properties are free JSON. Binary formats (timely's bincode between the processes of a
/// cluster, postcard in checkpoints) cannot read a JSON value back, so they carry its text.
mod properties {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::{Map, Value};

    pub fn serialize<S: Serializer>(m: &Map<String, Value>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            m.serialize(s)
        } else {
            serde_json::to_string(m)
                .map_err(serde::ser::Error::custom)?
                .serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
        if d.is_human_readable() {
            Map::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
}

/// A geofence that was rejected, naming the feature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("geofence {feature}: {message}")]
pub struct GeofenceError {
    /// Which feature: its id when it has one, else its position in the collection.
    pub feature: String,
    /// What is wrong with it.
    pub message: String,
}

/// Bounding box `[min_lon, min_lat, max_lon, max_lat]`.
pub type BBox = [f64; 4];

/// Whether any of `polygons` holds the point (boundary included, holes excluded). Callers
/// usually checked a bounding box already; this does not recompute one.
#[inline]
pub fn polygons_contain(polygons: &[Polygon<f64>], lat: f64, lon: f64) -> bool {
    let c = Coord { x: lon, y: lat };
    polygons
        .iter()
        .any(|p| match coord_pos_relative_to_ring(c, p.exterior()) {
            CoordPos::Outside => false,
            CoordPos::OnBoundary => true,
            // Inside the shell: outside unless strictly inside a hole (a hole's boundary is
            // the polygon's boundary, which counts as inside).
            CoordPos::Inside => p
                .interiors()
                .iter()
                .all(|h| coord_pos_relative_to_ring(c, h) != CoordPos::Inside),
        })
}

/// Whether the point is within `radius_m` (haversine) of the center.
#[inline]
pub fn circle_contains(clat: f64, clon: f64, radius_m: f64, lat: f64, lon: f64) -> bool {
    haversine_km(clat, clon, lat, lon) * 1000.0 <= radius_m
}

/// [`circle_contains`] for a point whose `cos(lat)` the caller computed once for many
/// circles: most points are decided by the equirectangular distance, which for circles up
/// to 10 km below 80° of latitude is within 0.5% of the haversine one, and only points
/// within 1% of the radius fall back to the exact haversine test. Same answers, no
/// trigonometry in the common case.
#[inline]
pub fn circle_contains_near(
    clat: f64,
    clon: f64,
    radius_m: f64,
    lat: f64,
    lon: f64,
    cos_lat: f64,
) -> bool {
    if radius_m <= 10_000.0 && lat.abs() < 80.0 && clat.abs() < 80.0 && (lon - clon).abs() < 1.0 {
        let dy = (lat - clat).to_radians();
        let dx = (lon - clon).to_radians() * cos_lat;
        let d = EARTH_RADIUS_KM * 1000.0 * (dx * dx + dy * dy).sqrt();
        if d < radius_m * 0.99 {
            return true;
        }
        if d > radius_m * 1.01 {
            return false;
        }
    }
    circle_contains(clat, clon, radius_m, lat, lon)
}

impl Geofence {
    /// Whether the point is inside (boundary included, holes excluded).
    #[inline]
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        match &self.shape {
            Shape::Polygons(mp) => polygons_contain(&mp.0, lat, lon),
            Shape::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => circle_contains(*clat, *clon, *radius_m, lat, lon),
        }
    }

    /// Whether the geofence applies to a vehicle of `tenant`.
    #[inline]
    pub fn applies_to(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    /// A box that contains every point the geofence contains.
    pub fn bbox(&self) -> BBox {
        match &self.shape {
            Shape::Polygons(mp) => {
                let mut b = [f64::INFINITY, f64::INFINITY, -f64::INFINITY, -f64::INFINITY];
                for p in mp {
                    for c in p.exterior().coords() {
                        b[0] = b[0].min(c.x);
                        b[1] = b[1].min(c.y);
                        b[2] = b[2].max(c.x);
                        b[3] = b[3].max(c.y);
                    }
                }
                b
            }
            Shape::Circle { lat, lon, radius_m } => {
                // Angular radius on the sphere, widened a little against rounding.
                let ang = (radius_m / 1000.0 / EARTH_RADIUS_KM).to_degrees() * 1.001 + 1e-9;
                let (min_lat, max_lat) = (lat - ang, lat + ang);
                if min_lat <= -90.0 || max_lat >= 90.0 {
                    return [-180.0, min_lat.max(-90.0), 180.0, max_lat.min(90.0)];
                }
                let cos = max_lat.abs().max(min_lat.abs()).to_radians().cos();
                let dlon = (ang / cos).min(180.0);
                [lon - dlon, min_lat, lon + dlon, max_lat]
            }
        }
    }

    /// `"polygon"` or `"circle"`.
    pub fn kind(&self) -> &'static str {
        match self.shape {
            Shape::Polygons(_) => "polygon",
            Shape::Circle { .. } => "circle",
        }
    }

    /// The geofence as a GeoJSON `Feature` (circles as a `Point` with `radius_m`).
    pub fn to_feature(&self) -> Value {
        let mut props = self.properties.clone();
        let geometry = match &self.shape {
            Shape::Polygons(mp) => {
                let polys: Vec<Value> = mp
                    .iter()
                    .map(|p| {
                        let ring = |l: &LineString<f64>| {
                            Value::Array(
                                l.coords().map(|c| serde_json::json!([c.x, c.y])).collect(),
                            )
                        };
                        let mut rings = vec![ring(p.exterior())];
                        rings.extend(p.interiors().iter().map(ring));
                        Value::Array(rings)
                    })
                    .collect();
                serde_json::json!({"type": "MultiPolygon", "coordinates": polys})
            }
            Shape::Circle { lat, lon, radius_m } => {
                props.insert("radius_m".into(), serde_json::json!(radius_m));
                serde_json::json!({"type": "Point", "coordinates": [lon, lat]})
            }
        };
        serde_json::json!({
            "type": "Feature",
            "id": self.id.as_str(),
            "properties": props,
            "geometry": geometry,
        })
    }

    /// Parses and validates one GeoJSON `Feature`. `id` overrides the feature's own id (the
    /// API's path); `id_property` names a property to use when the feature has no id;
    /// `label` names the feature in errors when it has no id.
    pub fn from_feature(
        value: &Value,
        id: Option<&str>,
        id_property: Option<&str>,
        label: &str,
    ) -> Result<Geofence, GeofenceError> {
        let props = value
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let id_of = |v: Option<&Value>| match v {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let found = id.map(str::to_owned).or_else(|| {
            id_of(value.get("id"))
                .or_else(|| id_of(props.get("id")))
                .or_else(|| id_property.and_then(|p| id_of(props.get(p))))
        });
        let err = |feature: &str, message: String| GeofenceError {
            feature: feature.to_owned(),
            message,
        };
        let Some(gid) = found else {
            let hint = id_property
                .map(|p| format!(", properties.id or properties.{p}"))
                .unwrap_or_else(|| " or properties.id".into());
            return Err(err(
                label,
                format!("has no id (set the feature's id{hint})"),
            ));
        };
        let name = format!("{gid:?}");
        if gid.len() > 256 {
            return Err(err(&name, "id is longer than 256 bytes".into()));
        }
        if value.get("type").and_then(Value::as_str) != Some("Feature") {
            return Err(err(&name, "is not a GeoJSON Feature".into()));
        }
        let tenant = match props.get("tenant") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if !t.is_empty() => Some(CompactString::from(t.as_str())),
            Some(_) => return Err(err(&name, "properties.tenant must be a string".into())),
        };
        let feature = <geojson::Feature as Deserialize>::deserialize(value)
            .map_err(|e| err(&name, format!("is not valid GeoJSON: {e}")))?;
        let Some(geometry) = feature.geometry else {
            return Err(err(&name, "has no geometry".into()));
        };
        let shape = match geometry.value {
            geojson::GeometryValue::Polygon { coordinates } => Shape::Polygons(MultiPolygon(vec![
                polygon(&coordinates, 0, false).map_err(|m| err(&name, m))?,
            ])),
            geojson::GeometryValue::MultiPolygon { coordinates } => {
                let polys = coordinates
                    .iter()
                    .enumerate()
                    .map(|(i, p)| polygon(p, i, true))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| err(&name, m))?;
                if polys.is_empty() {
                    return Err(err(&name, "MultiPolygon has no polygons".into()));
                }
                Shape::Polygons(MultiPolygon(polys))
            }
            geojson::GeometryValue::Point { coordinates } => {
                let (lon, lat) = position(&coordinates).map_err(|m| err(&name, m))?;
                let radius_m = match props.get("radius_m").and_then(Value::as_f64) {
                    Some(r) if r.is_finite() && r > 0.0 => r,
                    Some(r) => {
                        return Err(err(
                            &name,
                            format!("properties.radius_m must be > 0 (got {r})"),
                        ))
                    }
                    None => {
                        return Err(err(
                            &name,
                            "a Point geofence needs properties.radius_m (metres, > 0)".into(),
                        ))
                    }
                };
                Shape::Circle { lat, lon, radius_m }
            }
            other => {
                return Err(err(
                    &name,
                    format!(
                    "geometry {} is not supported (Polygon, MultiPolygon, or Point with radius_m)",
                    other.type_name()
                ),
                ))
            }
        };
        Ok(Geofence {
            id: CompactString::from(gid),
            tenant,
            shape,
            properties: props,
        })
    }
}

fn position(p: &geojson::Position) -> Result<(f64, f64), String> {
    let s = p.as_slice();
    if s.len() < 2 {
        return Err("a position needs longitude and latitude".into());
    }
    let (lon, lat) = (s[0], s[1]);
    if !(lon.is_finite() && lat.is_finite()) || lat.abs() > 90.0 || lon.abs() > 180.0 {
        return Err(format!("position [{lon}, {lat}] is out of range"));
    }
    Ok((lon, lat))
}

/// Builds and validates one polygon from GeoJSON rings.
fn polygon(
    rings: &[Vec<geojson::Position>],
    index: usize,
    multi: bool,
) -> Result<Polygon<f64>, String> {
    let at = if multi {
        format!("polygon {index}: ")
    } else {
        String::new()
    };
    if rings.is_empty() {
        return Err(format!("{at}has no rings"));
    }
    let mut lines = Vec::with_capacity(rings.len());
    for (r, ring) in rings.iter().enumerate() {
        let which = if r == 0 {
            "exterior ring".to_owned()
        } else {
            format!("hole {r}")
        };
        let coords = ring
            .iter()
            .map(|p| position(p).map(|(x, y)| Coord { x, y }))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| format!("{at}{which}: {m}"))?;
        if coords.len() < 4 {
            return Err(format!(
                "{at}{which} has {} positions; a closed ring needs at least 4",
                coords.len()
            ));
        }
        if coords.first() != coords.last() {
            return Err(format!(
                "{at}{which} is not closed (its first and last positions differ)"
            ));
        }
        lines.push(LineString(coords));
    }
    let exterior = lines.remove(0);
    let poly = Polygon::new(exterior, lines);
    if let Err(e) = poly.check_validation() {
        return Err(format!("{at}{e}"));
    }
    Ok(poly)
}

/// The outcome of loading a GeoJSON document: the valid geofences and the rejected ones.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid geofences, in document order (ids unique).
    pub geofences: Vec<Geofence>,
    /// Rejected features.
    pub rejected: Vec<GeofenceError>,
}

/// Loads a GeoJSON `FeatureCollection` (or a single `Feature`). Fails as a whole only when
/// the document is not JSON or not one of those; single bad features are rejected.
pub fn load(text: &str, id_property: Option<&str>) -> Result<Loaded, String> {
    // The document is split into its features without building a tree of the whole file
    // (a collection of 100,000 geofences is tens of MB of JSON); each feature is then
    // parsed on its own.
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(rename = "type")]
        kind: Option<String>,
        #[serde(borrow, default)]
        features: Option<Vec<&'a serde_json::value::RawValue>>,
    }
    let doc: Doc<'_> = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let raw: Vec<&str> = match doc.kind.as_deref() {
        Some("FeatureCollection") => doc
            .features
            .ok_or("a FeatureCollection needs a features array")?
            .into_iter()
            .map(|f| f.get())
            .collect(),
        Some("Feature") => vec![text],
        _ => return Err("expected a GeoJSON FeatureCollection or Feature".into()),
    };
    let mut out = Loaded::default();
    let mut seen = std::collections::HashSet::new();
    for (i, f) in raw.into_iter().enumerate() {
        let value: Value =
            serde_json::from_str(f).map_err(|e| format!("feature #{i} is not JSON: {e}"))?;
        match Geofence::from_feature(&value, None, id_property, &format!("#{i}")) {
            Ok(g) if !seen.insert(g.id.clone()) => out.rejected.push(GeofenceError {
                feature: format!("{:?} (#{i})", g.id.as_str()),
                message: "duplicate id (an earlier feature has it)".into(),
            }),
            Ok(g) => out.geofences.push(g),
            Err(e) => out.rejected.push(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn square(id: &str, holes: bool) -> Value {
        let mut rings = vec![json!([
            [0.0, 0.0],
            [0.0, 1.0],
            [1.0, 1.0],
            [1.0, 0.0],
            [0.0, 0.0]
        ])];
        if holes {
            rings.push(json!([
                [0.25, 0.25],
                [0.75, 0.25],
                [0.75, 0.75],
                [0.25, 0.75],
                [0.25, 0.25]
            ]));
        }
        json!({"type": "Feature", "id": id, "properties": {}, "geometry": {"type": "Polygon", "coordinates": rings}})
    }

    fn one(v: Value) -> Result<Geofence, GeofenceError> {
        Geofence::from_feature(&v, None, None, "#0")
    }

    #[test]
    fn boundary_is_inside_holes_are_outside() {
        let g = one(square("a", true)).unwrap();
        assert!(g.contains(0.1, 0.1));
        assert!(g.contains(0.0, 0.5), "outer boundary");
        assert!(g.contains(1.0, 1.0), "corner");
        assert!(!g.contains(0.5, 0.5), "in the hole");
        assert!(g.contains(0.25, 0.5), "hole boundary");
        assert!(!g.contains(1.0001, 0.5));
        assert_eq!(g.bbox(), [0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn circles_use_haversine() {
        let g = one(
            json!({"type": "Feature", "id": 7, "properties": {"radius_m": 150.0, "tenant": "acme"},
            "geometry": {"type": "Point", "coordinates": [-8.61, 41.15]}}),
        )
        .unwrap();
        assert_eq!(g.id, "7");
        assert_eq!(g.tenant.as_deref(), Some("acme"));
        assert!(g.applies_to("acme") && !g.applies_to("globex"));
        // 149 m and 151 m north of the center.
        let dlat = |m: f64| (m / 1000.0 / EARTH_RADIUS_KM).to_degrees();
        assert!(g.contains(41.15 + dlat(149.0), -8.61));
        assert!(!g.contains(41.15 + dlat(151.0), -8.61));
        let b = g.bbox();
        assert!(b[1] < 41.15 - dlat(150.0) && b[3] > 41.15 + dlat(150.0));
        // Points due east at 149 m are inside and inside the box.
        let east = -8.61 + dlat(149.0) / 41.15f64.to_radians().cos();
        assert!(g.contains(41.15, east) && east < b[2]);
    }

    #[test]
    fn the_fast_circle_test_agrees_with_haversine() {
        use proptest::prelude::*;
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(100_000));
        runner
            .run(
                &(
                    -85.0..85.0f64,
                    -179.0..179.0f64,
                    1.0..12_000.0f64,
                    0.0..std::f64::consts::TAU,
                    0.0..2.0f64,
                ),
                |(clat, clon, r, angle, frac)| {
                    // Points around the circle, many close to its edge.
                    let d = r * frac;
                    let lat = clat + (d * angle.cos() / 1000.0 / EARTH_RADIUS_KM).to_degrees();
                    let lon = clon
                        + (d * angle.sin() / 1000.0 / EARTH_RADIUS_KM).to_degrees()
                            / clat.to_radians().cos().max(0.05);
                    let cos = lat.to_radians().cos();
                    prop_assert_eq!(
                        circle_contains_near(clat, clon, r, lat, lon, cos),
                        circle_contains(clat, clon, r, lat, lon)
                    );
                    Ok(())
                },
            )
            .unwrap();
    }

    #[test]
    fn bad_features_are_rejected_by_name() {
        let unclosed = json!({"type": "Feature", "id": "u", "geometry": {"type": "Polygon",
            "coordinates": [[[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]]}});
        assert!(one(unclosed).unwrap_err().to_string().contains("\"u\""));
        let unclosed5 = json!({"type": "Feature", "id": "u5", "geometry": {"type": "Polygon",
            "coordinates": [[[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.5, -0.1]]]}});
        assert!(one(unclosed5).unwrap_err().message.contains("not closed"));
        let bowtie = json!({"type": "Feature", "id": "bow", "geometry": {"type": "Polygon",
            "coordinates": [[[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]}});
        let e = one(bowtie).unwrap_err();
        assert_eq!(e.feature, "\"bow\"");
        assert!(e.message.contains("self-intersection"), "{e}");
        let no_id = json!({"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}});
        assert!(one(no_id)
            .unwrap_err()
            .to_string()
            .contains("geofence #0: has no id"));
        for r in [json!(0.0), json!(-5), json!("x")] {
            let c = json!({"type": "Feature", "id": "c", "properties": {"radius_m": r},
                "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}});
            assert!(one(c).is_err());
        }
        let line = json!({"type": "Feature", "id": "l", "geometry": {"type": "LineString", "coordinates": [[0.0, 0.0], [1.0, 1.0]]}});
        assert!(one(line).unwrap_err().message.contains("not supported"));
    }

    #[test]
    fn a_collection_loads_what_is_valid() {
        let doc = json!({"type": "FeatureCollection", "features": [
            square("a", false), square("a", false),
            {"type": "Feature", "properties": {"code": "p1"}, "geometry": {"type": "Point", "coordinates": [1.0, 2.0]}},
            {"type": "Feature", "properties": {"code": "p2", "radius_m": 10}, "geometry": {"type": "Point", "coordinates": [1.0, 2.0]}},
        ]});
        let l = load(&doc.to_string(), Some("code")).unwrap();
        assert_eq!(
            l.geofences
                .iter()
                .map(|g| g.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "p2"]
        );
        assert_eq!(l.rejected.len(), 2, "{:?}", l.rejected);
        assert!(load("[]", None).is_err());
        // Round trip through the listing form.
        let g = &l.geofences[0];
        let back = Geofence::from_feature(&g.to_feature(), None, None, "#0").unwrap();
        assert_eq!(&back, g);
    }
}
