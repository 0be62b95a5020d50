"""The batch reference of `cargo bench --bench duckdb`: DuckDB's SQL over the same NDJSON
input the job reads, computing what a batch user would ask of it, written as Parquet:

- the latest state of every vehicle (its newest fix);
- 1-minute windows per vehicle (fixes, mean and max speed, distance, fuel used);
- daily distance and fuel per vehicle (and km/L);
- per geofence (circles), the fixes inside it and the distinct vehicles seen inside.

Distance is the haversine distance between a vehicle's consecutive fixes (sphere of
6371.0088 km), fuel the rise of the cumulative `fuel_used_l` between them, as in
docs/semantics.md. Usage: duckdb_aggregates.py INPUT_DIR FENCES_CSV OUT_DIR THREADS.
Prints `peak_rss_kib N` (this process's peak resident memory) last.
"""

import resource
import sys

import duckdb

src, fences, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET preserve_insertion_order = false")

HAVERSINE = """2 * 6371.0088 * asin(sqrt(
    pow(sin(radians({lat2} - {lat1}) / 2), 2)
    + cos(radians({lat1})) * cos(radians({lat2})) * pow(sin(radians({lon2} - {lon1}) / 2), 2)))"""

con.execute(f"""
CREATE TEMP TABLE fixes AS
SELECT vehicle_id, ts, lat, lon, speed_kmh, fuel_used_l
FROM read_ndjson('{src}/*', columns = {{
    vehicle_id: 'VARCHAR', ts: 'BIGINT', lat: 'DOUBLE', lon: 'DOUBLE',
    speed_kmh: 'DOUBLE', fuel_used_l: 'DOUBLE'}})
""")
con.execute(f"""
CREATE TEMP TABLE segments AS
SELECT vehicle_id, ts, speed_kmh,
       coalesce({HAVERSINE.format(lat1="plat", lon1="plon", lat2="lat", lon2="lon")}, 0) AS km,
       coalesce(greatest(fuel_used_l - pfuel, 0), 0) AS litres
FROM (SELECT *, lag(lat) OVER w AS plat, lag(lon) OVER w AS plon,
             lag(fuel_used_l) OVER w AS pfuel
      FROM fixes WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts))
""")
con.execute(f"""
COPY (SELECT vehicle_id, max(ts) AS ts, arg_max(lat, ts) AS lat, arg_max(lon, ts) AS lon,
             arg_max(speed_kmh, ts) AS speed_kmh, arg_max(fuel_used_l, ts) AS fuel_used_l
      FROM fixes GROUP BY vehicle_id)
TO '{out}/state.parquet' (FORMAT parquet)
""")
con.execute(f"""
COPY (SELECT vehicle_id, ts // 60000 * 60000 AS window_start, count(*) AS fixes,
             avg(speed_kmh) AS avg_speed_kmh, max(speed_kmh) AS max_speed_kmh,
             sum(km) AS distance_km, sum(litres) AS fuel_used_l
      FROM segments GROUP BY ALL)
TO '{out}/1m.parquet' (FORMAT parquet)
""")
con.execute(f"""
COPY (SELECT vehicle_id, ts // 86400000 * 86400000 AS day, sum(km) AS distance_km,
             sum(litres) AS fuel_used_l,
             CASE WHEN sum(litres) > 0 THEN sum(km) / sum(litres) END AS km_per_l
      FROM segments GROUP BY ALL)
TO '{out}/1d.parquet' (FORMAT parquet)
""")
# A bounding box (1% wider than the circle) first, so that the haversine is computed only
# near a geofence: the same counts, three times faster than the plain join.
con.execute(f"""
COPY (SELECT f.id, count(*) AS fixes_inside, count(DISTINCT x.vehicle_id) AS vehicles
      FROM (SELECT *, 1.01 * radius_m / 111195.0 AS dlat,
                   1.01 * radius_m / (111195.0 * cos(radians(lat))) AS dlon
            FROM read_csv('{fences}', header = true)) f
      JOIN fixes x
        ON x.lat BETWEEN f.lat - f.dlat AND f.lat + f.dlat
       AND x.lon BETWEEN f.lon - f.dlon AND f.lon + f.dlon
       AND {HAVERSINE.format(lat1="f.lat", lon1="f.lon", lat2="x.lat", lon2="x.lon")} * 1000
           <= f.radius_m
      GROUP BY f.id)
TO '{out}/geofences.parquet' (FORMAT parquet)
""")
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
