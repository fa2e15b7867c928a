# Where the Sidekiq doubles find Redis: REDIS_URL, and the redis-namespace Atmosphere uses
# (SIDEKIQ_NAMESPACE, default "atmosphere"; empty for none).
module SidekiqDouble
  def self.redis_options
    redis = {url: ENV.fetch("REDIS_URL")}
    namespace = ENV.fetch("SIDEKIQ_NAMESPACE", "atmosphere")
    redis[:namespace] = namespace unless namespace.empty?
    redis
  end
end
