-- X-Wikimedia-Debug routing to the mw-experimental nodes, for Traffic Server's Lua remap
-- plugin (tslua). It reads the table that `mw-experimental routing` writes, and sends a request
-- whose header names one of its backends to that node; any other request passes on untouched.
--
-- remap.config (after the rule's other plugins, before WMF's own x-wikimedia-debug-routing.lua):
--
--   map http://en.wikipedia.org/ https://mw-web.discovery.wmnet:4450/ \
--     @plugin=tslua.so @pparam=/etc/trafficserver/lua/mw-experimental-debug-routing.lua \
--     @pparam=/etc/trafficserver/lua/mw-experimental-debug-routing.table
--
-- The table file is exactly `mw-experimental routing`'s output: a comment line, then one line
-- per backend, `["BACKEND"] = { host = "HOST", port = PORT },` (the rows of WMF's debug_map).
-- It is read when the script loads and again when it is older than RELOAD_SECONDS, so a node
-- switched on or off is routed (or not) without restarting Traffic Server. A table that cannot
-- be read or does not parse is reported with ts.error and the last good one is kept.
--
-- The header: `X-Wikimedia-Debug: backend=NAME; profile; log`. The backend is the `backend`
-- attribute (letters, digits, dots, dashes); when there is none, the whole header is the name,
-- as WMF's script does for old clients.
--
--   no header, or a name not in the table  -> TS_LUA_REMAP_NO_REMAP: the next plugin in the
--                                             chain (WMF's script) or the rule's target decides
--   a name in the table                    -> the request goes to its host:port, uncached,
--                                             and the remap chain stops there

local RELOAD_SECONDS = 10

local table_path = nil
local routes = {}
local read_at = nil

-- The table file's rows as a Lua table, or nil and why. The rows are evaluated as a table
-- constructor in an empty environment: they can name values, not reach any function.
local function read_table(path)
    local f, err = io.open(path, "r")
    if not f then
        return nil, err
    end
    local text = f:read("*a")
    f:close()
    local chunk, perr = loadstring("return {\n" .. text .. "\n}", "=" .. path)
    if not chunk then
        return nil, perr
    end
    setfenv(chunk, {})
    local ok, t = pcall(chunk)
    if not ok then
        return nil, t
    end
    if type(t) ~= "table" then
        return nil, "not a table"
    end
    local out = {}
    for name, target in pairs(t) do
        if type(name) == "string" and type(target) == "table"
            and type(target.host) == "string" and type(target.port) == "number" then
            out[name] = { host = target.host, port = target.port }
        else
            ts.error("mw-experimental-debug-routing: " .. path .. ": skipped an entry that is not [\"BACKEND\"] = { host = \"HOST\", port = PORT }")
        end
    end
    return out
end

local function refresh()
    local now = ts.now()
    if read_at ~= nil and now - read_at < RELOAD_SECONDS then
        return
    end
    read_at = now
    local t, err = read_table(table_path)
    if t then
        routes = t
    else
        ts.error("mw-experimental-debug-routing: reading the routing table " .. table_path ..
            " (written by `mw-experimental routing`): " .. tostring(err) .. "; keeping the last one read")
    end
end

function __init__(argtb)
    if #argtb < 1 then
        ts.error("mw-experimental-debug-routing: give the routing table's path as the second @pparam")
        return -1
    end
    table_path = argtb[1]
    refresh()
    return 0
end

-- The backend a header value names.
local function backend_of(xwd)
    return string.match(xwd, "backend=([%a%d%.-]+)") or xwd
end

function do_remap()
    local xwd = ts.client_request.header["X-Wikimedia-Debug"]
    if not xwd then
        return TS_LUA_REMAP_NO_REMAP
    end
    refresh()
    local target = routes[backend_of(xwd)]
    if not target then
        return TS_LUA_REMAP_NO_REMAP
    end
    ts.client_request.set_url_host(target.host)
    ts.client_request.set_url_port(target.port)
    -- A debug request is for this node only: never answered from, or stored in, the cache.
    ts.http.config_int_set(TS_LUA_CONFIG_HTTP_CACHE_HTTP, 0)
    return TS_LUA_REMAP_DID_REMAP_STOP
end
